"""The paper brokerage: simulated market orders filled at the symbol's last price, kept in
PostgreSQL (its own tables, its own transactions, as a real broker's book would be).

Knobs (``paper.*`` settings) make it fill partially, reject symbols, answer 5xx and answer
slowly, for demos and tests. Like Alpaca it refuses a second order under a client order id.
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from typing import Any, ParamSpec, TypeVar

import psycopg2
from sqlalchemy import case, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.db import engine_for
from models.domain.quantities import order_increment
from models.tables import Accumulator, PaperOrder, PaperOrderRequest
from tasks.ports import (
    AccountBalance,
    Asset,
    Brokerage,
    BrokerOrder,
    BrokerPosition,
    DuplicateClientOrderId,
    OrderRequest,
    TemporaryError,
)
from workers.settings import PaperSettings

_ONE_MILLION = Decimal(1_000_000)
P = ParamSpec("P")
R = TypeVar("R")


def _unreachable_is_temporary(method: Callable[P, R]) -> Callable[P, R]:
    """A database outage on the far side looks like a broker outage: outcome unknown."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc.orig, psycopg2.OperationalError):
                raise TemporaryError(f"paper brokerage unreachable: {exc.orig}") from exc
            raise

    return wrapper


class PaperBrokerage(Brokerage):
    def __init__(
        self, database_url: str, settings: PaperSettings, rng: random.Random | None = None, account: str = "default"
    ) -> None:
        self._url = database_url
        self._account = account
        self._settings = settings
        self._rng = rng or random.Random()

    @_unreachable_is_temporary
    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        with self._session() as session:
            if self._draw_failure():
                self._log_request(session, request.client_order_id, "error_5xx")
                session.commit()
                raise TemporaryError("paper brokerage: simulated 503 Service Unavailable")
            status, filled, price = self._simulate_fill(session, request)
            order_id = session.execute(
                insert(PaperOrder)
                .values(
                    id=uuid.uuid4(),
                    client_order_id=request.client_order_id,
                    account=self._account,
                    symbol=request.symbol,
                    side=request.side,
                    qty=request.quantity,
                    status=status,
                    filled_qty=filled,
                    filled_avg_price=price if filled > 0 else None,
                )
                .on_conflict_do_nothing(index_elements=["client_order_id"])
                .returning(PaperOrder.id)
            ).scalar_one_or_none()
            self._log_request(session, request.client_order_id, "accepted" if order_id else "duplicate")
            session.commit()
        if order_id is None:
            raise DuplicateClientOrderId(f"client_order_id must be unique: {request.client_order_id}")
        # Slow answers after accepting: the caller may time out or die here, order already placed.
        if self._settings.accept_delay_seconds:
            time.sleep(float(self._settings.accept_delay_seconds))  # float-ok: a duration, not money
        order = self.get_order_by_client_order_id(request.client_order_id)
        assert order is not None
        return order

    @_unreachable_is_temporary
    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        with self._session() as session:
            row = session.scalars(select(PaperOrder).where(PaperOrder.client_order_id == client_order_id)).first()
            return _to_broker_order(row) if row else None

    @_unreachable_is_temporary
    def get_order(self, order_id: str) -> BrokerOrder:
        with self._session() as session:
            row = session.get(PaperOrder, uuid.UUID(order_id))
            if row is None:
                raise TemporaryError(f"paper brokerage: order {order_id} not found")
            return _to_broker_order(row)

    @_unreachable_is_temporary
    def latest_price(self, symbol: str) -> Decimal:
        with self._session() as session:
            return self._last_price(session, symbol)

    @_unreachable_is_temporary
    def get_account(self) -> AccountBalance:
        with self._session() as session:
            spent = session.scalar(
                select(func.coalesce(func.sum(_signed_fill() * PaperOrder.filled_avg_price), 0)).where(
                    PaperOrder.account == self._account
                )
            )
            cash = self._settings.starting_cash - spent
            value = sum((p.market_value or 0 for p in self._positions(session)), Decimal(0))
        return AccountBalance(cash=cash, buying_power=max(cash, Decimal(0)), equity=cash + value)

    @_unreachable_is_temporary
    def list_positions(self) -> list[BrokerPosition]:
        with self._session() as session:
            return self._positions(session)

    def close_position(self, symbol: str, quantity: Decimal | None = None) -> BrokerOrder:
        held = next((p.quantity for p in self.list_positions() if p.symbol == symbol), Decimal(0))
        amount = abs(held) if quantity is None else quantity
        side = "sell" if held > 0 else "buy"
        return self.submit_order(OrderRequest(f"paper-close-{uuid.uuid4().hex}", symbol, side, amount))

    def get_asset(self, symbol: str) -> Asset | None:
        fractionable = symbol in self._settings.fractionable_symbols
        increment = Decimal("0.0001") if fractionable else Decimal(1)
        return Asset(
            symbol=symbol,
            tradable=symbol not in self._settings.reject_symbols,
            fractionable=fractionable,
            min_order_size=increment,
            min_trade_increment=increment,
            price_increment=Decimal("0.01"),
        )

    @_unreachable_is_temporary
    def ping(self) -> None:
        with self._session() as session:
            session.execute(select(1))

    def _session(self) -> Session:
        return Session(engine_for(self._url))

    def _draw_failure(self) -> bool:
        rate = self._settings.fail_rate
        return rate > 0 and Decimal(self._rng.randrange(1_000_000)) < rate * _ONE_MILLION

    def _simulate_fill(self, session: Session, request: OrderRequest) -> tuple[str, Decimal, Decimal]:
        price = self._last_price(session, request.symbol)
        if request.symbol in self._settings.reject_symbols:
            return "rejected", Decimal(0), price
        # A partial fill is rounded down to the order's own step, so fractional orders fill too.
        step = order_increment(request.quantity)
        filled = (request.quantity * self._settings.partial_fill_ratio / step).to_integral_value(ROUND_DOWN) * step
        return ("filled" if filled == request.quantity else "canceled"), filled, price

    def _positions(self, session: Session) -> list[BrokerPosition]:
        rows = session.execute(
            select(
                PaperOrder.symbol,
                func.sum(_signed_fill()),
                func.sum(PaperOrder.filled_qty * PaperOrder.filled_avg_price).filter(PaperOrder.side == "buy"),
                func.sum(PaperOrder.filled_qty).filter(PaperOrder.side == "buy"),
            )
            .where(PaperOrder.account == self._account)
            .group_by(PaperOrder.symbol)
            .having(func.sum(_signed_fill()) != 0)
            .order_by(PaperOrder.symbol)
        ).all()
        positions = []
        for symbol, quantity, bought_value, bought in rows:
            price = self._last_price(session, symbol)
            entry = (bought_value / bought).quantize(Decimal(1).scaleb(-18)) if bought else None
            positions.append(BrokerPosition(symbol, quantity, entry, price, quantity * price))
        return positions

    def _last_price(self, session: Session, symbol: str) -> Decimal:
        """The paper market trades at the price of the symbol's latest accumulated trade."""
        price = session.scalar(select(Accumulator.last_price).where(Accumulator.symbol == symbol))
        return price or self._settings.default_price

    @staticmethod
    def _log_request(session: Session, client_order_id: str, outcome: str) -> None:
        session.add(PaperOrderRequest(client_order_id=client_order_id, outcome=outcome))


def _signed_fill() -> Any:
    return case((PaperOrder.side == "buy", PaperOrder.filled_qty), else_=-PaperOrder.filled_qty)


def _to_broker_order(row: PaperOrder) -> BrokerOrder:
    return BrokerOrder(
        id=str(row.id),
        client_order_id=row.client_order_id,
        symbol=row.symbol,
        side=row.side,
        quantity=row.qty,
        status=row.status,
        filled_quantity=row.filled_qty,
        filled_average_price=row.filled_avg_price,
    )
