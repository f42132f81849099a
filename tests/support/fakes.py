"""A fake brokerage (the far side only): in-memory orders, scripted answers, POSTs counted."""

from __future__ import annotations

import uuid
from collections import Counter
from decimal import ROUND_DOWN, Decimal

from models.domain.quantities import order_increment
from tasks.ports import (
    AccountBalance,
    Asset,
    Brokerage,
    BrokerOrder,
    BrokerPosition,
    DuplicateClientOrderId,
    InvalidOrder,
    OrderRequest,
    TemporaryError,
)


class FakeBrokerage(Brokerage):
    def __init__(self, fill_ratio: Decimal = Decimal(1), price: Decimal = Decimal("100")) -> None:
        self.fill_ratio = fill_ratio
        self.price = price
        self.orders: dict[str, BrokerOrder] = {}
        self.posts: Counter[str] = Counter()
        self.refuse_symbols: set[str] = set()  # answered like Alpaca's 422
        self.reject_symbols: set[str] = set()  # accepted, then status "rejected"
        self.timeout_after_accept = 0  # next N orders are stored, then the call times out
        self.unavailable = 0  # next N calls fail before reaching the book
        self.balance = AccountBalance(Decimal(100_000), Decimal(100_000), Decimal(100_000))
        self.positions: list[BrokerPosition] = []
        self.assets: dict[str, Asset] = {}

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        self.posts[request.client_order_id] += 1
        self._maybe_unavailable()
        if request.symbol in self.refuse_symbols:
            raise InvalidOrder(f"asset {request.symbol} is not tradable")
        if request.client_order_id in self.orders:
            raise DuplicateClientOrderId("client_order_id must be unique")
        order = self._fill(request)
        self.orders[request.client_order_id] = order
        if self.timeout_after_accept:
            self.timeout_after_accept -= 1
            raise TemporaryError("read timeout")
        return order

    def by_account(self, _account: str) -> FakeBrokerage:
        """One fake far side for every account."""
        return self

    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        self._maybe_unavailable()
        return self.orders.get(client_order_id)

    def get_order(self, order_id: str) -> BrokerOrder:
        return next(o for o in self.orders.values() if o.id == order_id)

    def latest_price(self, symbol: str) -> Decimal:
        self._maybe_unavailable()
        return self.price

    def get_account(self) -> AccountBalance:
        self._maybe_unavailable()
        return self.balance

    def list_positions(self) -> list[BrokerPosition]:
        self._maybe_unavailable()
        return list(self.positions)

    def close_position(self, symbol: str, quantity: Decimal | None = None) -> BrokerOrder:
        held = next((p for p in self.positions if p.symbol == symbol), None)
        if held is None:
            raise InvalidOrder(f"position does not exist: {symbol}")
        amount = abs(held.quantity) if quantity is None else quantity
        order = self.submit_order(OrderRequest(f"close-{uuid.uuid4().hex}", symbol, "sell", amount))
        self.positions.remove(held)  # liquidated at the broker
        return order

    def get_asset(self, symbol: str) -> Asset | None:
        self._maybe_unavailable()
        return self.assets.get(symbol)

    def ping(self) -> None:
        self._maybe_unavailable()

    def _maybe_unavailable(self) -> None:
        if self.unavailable:
            self.unavailable -= 1
            raise TemporaryError("503 Service Unavailable")

    def _fill(self, request: OrderRequest) -> BrokerOrder:
        if request.symbol in self.reject_symbols:
            status, filled = "rejected", Decimal(0)
        else:
            step = order_increment(request.quantity)
            filled = (request.quantity * self.fill_ratio / step).to_integral_value(ROUND_DOWN) * step
            status = "filled" if filled == request.quantity else "canceled"
        return BrokerOrder(
            id=str(uuid.uuid4()),
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            quantity=request.quantity,
            status=status,
            filled_quantity=filled,
            filled_average_price=self.price if filled else None,
        )
