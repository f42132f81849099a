"""A fleet-wide breaker per symbol for brokerage order calls (issue 12: a sick symbol stays sick alone).

It follows the price feed's breaker (``tasks.prices``), counted in PostgreSQL
(``order_call_health``) so that every worker of the fleet sees the same state:

closed     orders go out. A call whose answer said nothing (a timeout, a 5xx, a malformed answer,
           a dropped connection) is counted; an answer (an order, or a refusal, which is the broker
           answering too) resets the count.
open       after ``failures_to_open`` of them in a row no execution of the symbol is claimed until
           ``cooldown_until`` (``SYMBOL_COOLING``): the symbol's pending executions stop taking
           execution threads and broker calls that would most likely hang too.
half_open  once the cooldown is over, the next claim of the symbol is its one probe: the health
           row names the probe's claim (``probe_token`` = ``executions.claimed_by``), so the probe
           lives exactly as long as that claim's heartbeat-renewed lease, and a dead worker's
           probe goes to the next claimer within one lease. An answer closes the breaker; another
           silence opens it again for a longer cooldown.

The cooldown doubles with each opening in a row (capped) and is not jittered: jitter spreads
independent clients that would otherwise hit a dependency at the same moment, but here one row
decides and exactly one probe reaches the broker however many workers are waiting, so there is no
herd to spread; a deterministic cooldown is also what an operator reads in the row.

Nothing here changes what a call is allowed to do (SPEC 5): an execution whose answer said
nothing stays in flight, and its next claim, probe or not, looks the order up by its
``client_order_id`` before anything is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.tables import Execution
from models.tables_ops import OrderCallHealth
from tasks.ports import BrokerageMisconfigured, RateLimited, TemporaryError, UnresolvedOrder

log = logging.getLogger(__name__)
MAX_ERROR_TEXT = 300


@dataclass(frozen=True)
class BreakerConfig:
    # Calls in a row whose answer said nothing. Five, not three: a broker that answers 5% of all
    # calls 5xx opens a healthy symbol's breaker after three in a row about once per thousand
    # calls of the symbol (a retry looks up and POSTs again), and each opening holds its orders
    # for a whole cooldown; a symbol whose calls hang holds only its calls_per_symbol threads
    # meanwhile, so opening two calls later costs little.
    failures_to_open: int = 5
    cooldown_seconds: int = 10  # the first cooldown; doubles with each opening in a row
    max_cooldown_seconds: int = 300


class BreakerRole(StrEnum):
    """What the claim saw, so that recording an answer costs a statement only when it must."""

    QUIET = "quiet"  # closed with nothing counted: an answer changes nothing
    COUNTING = "counting"  # closed with failures counted: an answer resets them
    PROBE = "probe"  # this call is the symbol's one probe: an answer closes the breaker


@dataclass(frozen=True)
class Gate:
    """The breaker's word on a claim: go (with a role), take the probe, or wait ``wait_seconds``."""

    role: BreakerRole | None  # None: the breaker holds the symbol
    wants_probe: bool = False
    wait_seconds: int = 0


def health_columns(
    symbol: str | ColumnElement[str], now: datetime | ColumnElement[datetime]
) -> tuple[ColumnElement[Any], ...]:
    """The breaker's columns for the claim's one statement (see ``with_health``); ``symbol`` and
    ``now`` are values or bound parameters."""
    probing = exists().where(
        Execution.symbol == symbol,
        Execution.claimed_by == OrderCallHealth.probe_token,
        Execution.claimed_until > now,
    )
    return (
        OrderCallHealth.state.label("breaker_state"),
        OrderCallHealth.cooldown_until.label("breaker_cooldown_until"),
        OrderCallHealth.consecutive_failures.label("breaker_failures"),
        probing.label("breaker_probing"),
    )


def with_health(statement: Select[Any], symbol: str | ColumnElement[str]) -> Select[Any]:
    """``statement`` over the symbol's health row, or over NULLs when it has none (closed)."""
    anchor = select(literal(1).label("one")).subquery("anchor")
    return statement.select_from(anchor).outerjoin(OrderCallHealth, OrderCallHealth.symbol == symbol)


def gate(row: Any, config: BreakerConfig, lease_seconds: int, now: datetime) -> Gate:
    """Read the claim statement's breaker columns."""
    state = row.breaker_state or "closed"
    if state == "closed":
        return Gate(BreakerRole.COUNTING if row.breaker_failures else BreakerRole.QUIET)
    if state == "open" and row.breaker_cooldown_until > now:
        return Gate(None, wait_seconds=_ceil_seconds(row.breaker_cooldown_until - now))
    if state == "half_open" and row.breaker_probing:
        return Gate(None, wait_seconds=lease_seconds)  # the probe answers, or its lease lapses, by then
    return Gate(BreakerRole.PROBE, wants_probe=True)


def take_probe(session: Session, symbol: str, token: str, now: datetime) -> bool:
    """Make claim ``token`` the symbol's one probe. The symbol's claim lock serialises claimers,
    and the WHERE re-checks under the row lock, so two workers never both probe."""
    dead_probe = ~exists().where(
        Execution.symbol == symbol, Execution.claimed_by == OrderCallHealth.probe_token, Execution.claimed_until > now
    )
    taken = session.execute(
        update(OrderCallHealth)
        .where(
            OrderCallHealth.symbol == symbol,
            or_(
                and_(OrderCallHealth.state == "open", OrderCallHealth.cooldown_until <= now),
                and_(OrderCallHealth.state == "half_open", dead_probe),
            ),
        )
        .values(state="half_open", probe_token=token, updated_at=now)
        .returning(OrderCallHealth.symbol)
    ).first()
    return taken is not None


def said_nothing(error: Exception | None) -> bool:
    """Is this outcome a failure of the symbol's order calls? A rate limit is an answer about the
    account (it carries its own wait), and an order we cannot follow is the broker answering."""
    if isinstance(error, (RateLimited, UnresolvedOrder)):
        return False
    return isinstance(error, (TemporaryError, BrokerageMisconfigured))


def note_call(
    session: Session,
    symbol: str,
    token: str,
    role: BreakerRole,
    error: Exception | None,
    config: BreakerConfig,
    now: datetime,
) -> None:
    """Count the call into the breaker, in the transaction that records its outcome."""
    if said_nothing(error):
        assert error is not None
        _count_failure(session, symbol, token, f"{type(error).__name__}: {error}"[:MAX_ERROR_TEXT], config, now)
    elif role is not BreakerRole.QUIET:
        _note_answer(session, symbol, token, role, now)


def _note_answer(session: Session, symbol: str, token: str, role: BreakerRole, now: datetime) -> None:
    # A call claimed while closed resets only a closed breaker: one that opened meanwhile waits
    # for its own probe (as in tasks.prices).
    ours = or_(
        OrderCallHealth.state == "closed",
        and_(OrderCallHealth.state == "half_open", OrderCallHealth.probe_token == token),
    )
    closed = session.execute(
        update(OrderCallHealth)
        .where(OrderCallHealth.symbol == symbol, ours)
        .values(state="closed", consecutive_failures=0, opens=0, cooldown_until=None, probe_token=None, updated_at=now)
        .returning(OrderCallHealth.symbol)
    ).first()
    if closed is not None and role is BreakerRole.PROBE:
        log.info("orders of %s: the broker answered the probe; breaker closed, orders go out", symbol,
                 extra={"symbol": symbol})  # fmt: skip


def _count_failure(session: Session, symbol: str, token: str, error: str, config: BreakerConfig, now: datetime) -> None:
    session.execute(
        insert(OrderCallHealth).values(symbol=symbol, updated_at=now).on_conflict_do_nothing(index_elements=["symbol"])
    )
    # The row lock serialises the symbol's recorders: each failure is counted once, one opens it.
    health = session.scalars(select(OrderCallHealth).where(OrderCallHealth.symbol == symbol).with_for_update()).one()
    health.consecutive_failures += 1
    health.last_error, health.updated_at = error, now
    probe_failed = health.state == "half_open" and health.probe_token == token
    if not probe_failed and not (health.state == "closed" and health.consecutive_failures >= config.failures_to_open):
        return
    health.opens += 1
    cooldown = min(config.max_cooldown_seconds, config.cooldown_seconds * 2 ** min(health.opens - 1, 20))
    health.state, health.cooldown_until, health.probe_token, health.opened_at = (
        "open",
        now + timedelta(seconds=cooldown),
        None,
        now,
    )
    log.warning(
        "orders of %s: %s; no order call for %s for %d s, then one probe (breaker open, %d in a row): %s",
        symbol,
        "the probe's answer said nothing either"
        if probe_failed
        else f"{health.consecutive_failures} broker answers in a row said nothing",
        symbol,
        cooldown,
        health.opens,
        error,
        extra={"symbol": symbol},
    )


def _ceil_seconds(delta: timedelta) -> int:
    return max(1, -int(-delta.total_seconds() // 1))
