"""The brokerage port: what dustpan asks of a broker, and the small exception family every
adapter translates vendor errors into. Only ``TemporaryError`` (and its ``RateLimited``) is
ever retried; a timeout is a ``TemporaryError`` and is not evidence that an order failed.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from decimal import Decimal


class BrokerageError(Exception):
    """Base of every error an adapter raises."""


class TemporaryError(BrokerageError):
    """Timeouts, connection errors, 5xx: the outcome is unknown, look up before acting again."""


class RateLimited(TemporaryError):
    """HTTP 429: wait (``retry_after`` seconds when the broker said) and try again."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidOrder(BrokerageError):
    """The broker refused the order for what it is (422, unknown or untradable symbol...)."""


class InsufficientFunds(InvalidOrder):
    """The broker refused the order for lack of buying power or position (403)."""


class DuplicateClientOrderId(InvalidOrder):
    """The broker already has an order under this client order id: look it up, never resend."""


class OperationalError(BrokerageError):
    """Misconfiguration or an answer we cannot read (401, malformed body): needs a person."""


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: str  # "buy" | "sell"
    quantity: Decimal  # whole shares for a market order


@dataclass(frozen=True)
class BrokerOrder:
    """The broker's view of one order, in Alpaca's vocabulary."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    status: str  # Alpaca order status: new, accepted, partially_filled, filled, canceled, rejected, ...
    filled_quantity: Decimal
    filled_average_price: Decimal | None


@dataclass(frozen=True)
class Asset:
    """Alpaca asset data: what the venue accepts for a symbol."""

    symbol: str
    tradable: bool
    fractionable: bool
    min_order_size: Decimal | None
    min_trade_increment: Decimal | None
    price_increment: Decimal | None


@dataclass(frozen=True)
class BrokerPosition:
    symbol: str
    quantity: Decimal  # signed: negative when short
    average_entry_price: Decimal | None
    current_price: Decimal | None
    market_value: Decimal | None


@dataclass(frozen=True)
class AccountBalance:
    cash: Decimal
    buying_power: Decimal
    equity: Decimal


class Brokerage(abc.ABC):
    """The port. Construct adapters without I/O; every method may raise a ``BrokerageError``."""

    @abc.abstractmethod
    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        """Send a market order. A duplicate ``client_order_id`` raises ``InvalidOrder``."""

    @abc.abstractmethod
    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order sent under this client order id, or None if the broker never accepted one."""

    @abc.abstractmethod
    def get_order(self, order_id: str) -> BrokerOrder:
        """The order with the broker's own id."""

    @abc.abstractmethod
    def latest_price(self, symbol: str) -> Decimal:
        """The last trade price of the symbol (Alpaca Market Data v2: latest trade)."""

    @abc.abstractmethod
    def get_account(self) -> AccountBalance:
        """Cash, buying power and equity (Alpaca: GET /v2/account)."""

    @abc.abstractmethod
    def list_positions(self) -> list[BrokerPosition]:
        """Every open position of the account (Alpaca: GET /v2/positions)."""

    @abc.abstractmethod
    def close_position(self, symbol: str, quantity: Decimal | None = None) -> BrokerOrder:
        """Liquidate a position or part of it (Alpaca: DELETE /v2/positions/{symbol}?qty=).

        The broker picks the order's client id, so dustpan's exactly-once flows sell through
        ``submit_order`` instead; this is for operators and adapters that need it."""

    @abc.abstractmethod
    def get_asset(self, symbol: str) -> Asset | None:
        """Asset data for the symbol, or None if the broker does not know it (GET /v2/assets/{symbol})."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise a ``BrokerageError`` if the brokerage cannot be reached."""
