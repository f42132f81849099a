"""The ports the use cases need, implemented in workers/ and wired in at process start.

``Brokerage`` is what dustpan asks of a broker, with the small exception family every
adapter translates vendor errors into, by what the answer is evidence of. Only
``TemporaryError`` and its subclasses are retried; a timeout, a 5xx or a 4xx to a read is not
evidence that an order failed, and neither is a refusal until a lookup found no order.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal


class BrokerageError(Exception):
    """Base of every error an adapter raises."""


class TemporaryError(BrokerageError):
    """The outcome is unknown: a timeout, a dropped connection, a 5xx, any 4xx answer to a read,
    or an answer we cannot read. Nothing may be concluded from it; look the order up by its
    ``client_order_id`` before acting again, and retry with backoff."""


class RateLimited(TemporaryError):
    """HTTP 429: wait ``retry_after`` seconds (from Retry-After or x-ratelimit-reset) and try again."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MalformedAnswer(TemporaryError):
    """The broker answered, but not in a form we can read. For a state-changing call this says
    nothing about whether the order was placed: record it on the row and reconcile by lookup."""


class UnresolvedOrder(TemporaryError):
    """The broker's order cannot be mapped onto the execution without a person (a replacement
    chain we cannot follow, a replacement for another quantity). Hold the execution; never re-order."""


class NotFound(BrokerageError):
    """A read the broker answered with its own "no such thing" (market data for an unknown
    symbol): evidence about the thing asked for, never about an order."""


class InvalidOrder(BrokerageError):
    """The broker refused this order (only a state-changing call raises it, only when the body
    says so). Settle it as refused, but only after one lookup by ``client_order_id`` found nothing."""


class InsufficientFunds(InvalidOrder):
    """The broker refused this order for lack of buying power or of shares to sell (403)."""


class AccountRefused(BrokerageError):
    """The broker refused the account, not the order: permissions, a blocked account, an asset
    class the account may not trade. Pause ordering for the account and alert a person once;
    never freeze symbols one by one for it."""


class DuplicateClientOrderId(BrokerageError):
    """The broker already has an order under this client order id: evidence that an earlier
    request was accepted. Look it up, never resend. (Not a refusal: a sibling of InvalidOrder.)"""


class BrokerageMisconfigured(BrokerageError):
    """Our side is wrong (API keys refused with 401, a URL that is not the broker's): needs a
    person. The outcome of a state-changing call that raised it is unknown, as for a timeout."""


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
    replaced_by: str | None = None  # the broker's id of the order that replaced this one


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
    """The port. Construct adapters without I/O; every method may raise a ``BrokerageError``.

    Reads (lookups, account, positions, assets, prices) never raise a refusal: whatever goes
    wrong with them is a ``TemporaryError``. Only ``submit_order`` and ``close_position``, the
    calls that change state at the broker, can be refused, and only when the broker says so."""

    @abc.abstractmethod
    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        """Send a market order.

        Raises:
            DuplicateClientOrderId: an order under this id exists; look it up, never resend.
            InvalidOrder / InsufficientFunds: refused; look up once, then settle as refused.
            AccountRefused: the account may not trade; pause the account, hold the execution.
            TemporaryError (RateLimited, MalformedAnswer): outcome unknown; look up, then retry.
            BrokerageMisconfigured: outcome unknown and a person is needed.
        """

    @abc.abstractmethod
    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order sent under this client order id, or None if the broker says it has none.

        Raises:
            TemporaryError: any other answer (a 403 or 422 included): unknown, retry later.
            BrokerageMisconfigured: a person is needed; unknown all the same.
        """

    @abc.abstractmethod
    def get_order(self, order_id: str) -> BrokerOrder:
        """The order with the broker's own id (used to follow ``replaced_by``).

        Raises:
            TemporaryError: any failure, a 404 included (the id came from the broker itself).
        """

    @abc.abstractmethod
    def latest_price(self, symbol: str) -> Decimal:
        """The last trade price of the symbol (Alpaca Market Data: the stocks or the crypto endpoint).

        Raises:
            TemporaryError (RateLimited, MalformedAnswer): unknown; keep the last known value, retry later.
            BrokerageMisconfigured: a person is needed (keys refused, wrong URL).
        """

    @abc.abstractmethod
    def get_account(self) -> AccountBalance:
        """Cash, buying power and equity (Alpaca: GET /v2/account).

        Raises:
            TemporaryError (RateLimited, MalformedAnswer): unknown; keep the last known value, retry later.
            BrokerageMisconfigured: a person is needed (keys refused, wrong URL).
        """

    @abc.abstractmethod
    def list_positions(self) -> list[BrokerPosition]:
        """Every open position of the account (Alpaca: GET /v2/positions), crypto pairs as ``BTC/USD``.

        Raises:
            TemporaryError (RateLimited, MalformedAnswer): unknown; keep the last known value, retry later.
            BrokerageMisconfigured: a person is needed (keys refused, wrong URL).
        """

    @abc.abstractmethod
    def close_position(self, symbol: str, quantity: Decimal | None = None) -> BrokerOrder:
        """Liquidate a position or part of it (Alpaca: DELETE /v2/positions/{symbol}?qty=).

        The broker picks the order's client id, so dustpan's exactly-once flows sell through
        ``submit_order`` instead; this is for operators and adapters that need it.

        Raises:
            InvalidOrder: no such position, or refused (InsufficientFunds: not that many shares).
            AccountRefused: the account may not trade.
            TemporaryError: unknown, and the position may be gone: read the positions before acting again.
        """

    @abc.abstractmethod
    def get_asset(self, symbol: str) -> Asset | None:
        """Asset data for the symbol, or None if the broker does not know it (GET /v2/assets/{symbol}).

        Raises:
            TemporaryError (RateLimited, MalformedAnswer): unknown; keep the last known value, retry later.
            BrokerageMisconfigured: a person is needed (keys refused, wrong URL).
        """

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise a ``BrokerageError`` if the brokerage cannot be reached (TemporaryError) or refuses
        our keys (BrokerageMisconfigured)."""


class Enqueue(abc.ABC):
    """How follow-up work leaves a use case: only after its commit, and only through here.

    Every method is a hint, never the record: the rows say what is left to do, and a message
    lost here (Redis down, a crash right after commit) is found again by the sweep. So no
    method raises; each logs what it could not send.

    The wake protocol keeps one ``ingestion.accumulate`` run queued per symbol however many
    webhooks arrive: ``wake`` raises a per-symbol flag and enqueues a run only when it raised
    it; the run clears the flag just before it tries to claim trades (``clear_wake``), so a
    trade committed after the claim raises it again and enqueues the next run. A run that finds
    the symbol's run under way notes that it bounced (``note_bounced``); the run under way, once
    committed, takes that note (``take_bounced``) and asks for one more run. Without a bounce
    nothing is asked for: the run the webhook enqueued is still to come. (The bounced run has
    lowered the flag too, so a trade arriving meanwhile may enqueue a run of its own: one
    message more, never one less.) A flag that stood over a second may stand for a message a
    killed worker took and never ran: the next trade sends another run then, at most once per
    hold per symbol, so a backed-up queue is never flooded.
    """

    @abc.abstractmethod
    def wake(self, symbols: Iterable[str]) -> None:
        """Ask for an accumulate run per symbol, at most one queued at a time per symbol."""

    @abc.abstractmethod
    def accumulate(self, symbol: str) -> None:
        """Enqueue an accumulate run for the symbol now (on its own queue if it has one)."""

    @abc.abstractmethod
    def submit(self, execution_ids: Iterable[uuid.UUID]) -> None:
        """Enqueue ``execution.submit`` for executions committed by the caller."""

    @abc.abstractmethod
    def clear_wake(self, symbol: str) -> None:
        """Lower the symbol's wake flag (a run is about to claim its trades)."""

    @abc.abstractmethod
    def note_bounced(self, symbol: str) -> None:
        """A run found the symbol's run under way: that one asks for a next run when it sees this."""

    @abc.abstractmethod
    def take_bounced(self, symbol: str) -> bool:
        """Whether a run bounced off this one, clearing the note (a failure says no: the sweep has it)."""

    @abc.abstractmethod
    def resend_stale(self, symbols: list[str], execution_ids: list[uuid.UUID], hold_seconds: int) -> int:
        """Re-enqueue stranded work, each item at most once per ``hold_seconds``; how many were sent.

        Raises when the broker is away: the sweep then counts as failed and is run again
        soon, instead of waiting a whole interval after the broker's return."""


class Latencies(abc.ABC):
    """Where the use cases report how long trades took to move on (SPEC 6 service levels).

    The task wrappers call it after the commit that made the event true. No method raises: an
    observation that could not be written is a gap in a graph, never a failed task (the
    adapter logs it). Waits are measured between the stamps the rows carry, so the histograms
    say what ``GET /trades/{id}`` shows.
    """

    @abc.abstractmethod
    def accumulated(self, waits: Sequence[timedelta]) -> None:
        """One wait per trade a committed accumulate run applied: ``accumulated_at - received_at``."""

    @abc.abstractmethod
    def submitted(self, wait: timedelta) -> None:
        """An execution's order first known at the broker: ``submitted_at`` minus the
        ``received_at`` of the oldest trade it took shares from directly."""


class NoLatencies(Latencies):
    """Observes nothing: for use cases run outside the fleet (tests, tools)."""

    def accumulated(self, waits: Sequence[timedelta]) -> None:
        pass

    def submitted(self, wait: timedelta) -> None:
        pass
