"""Recording what the broker said about an execution, in the transaction after the call.

``record_broker_order`` writes the broker's order (fills booked once, as deltas, under the
row lock), and what a finished order leads to: unfilled shares back into the net, a backoff
and a freeze after repeated failures, or the close of an exit's small remainder. A refusal is
settled here too, an unknown outcome is counted, and an account-wide refusal pauses the account.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import Exists, SQLColumnExpression, delete, exists, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.domain.execution_state import ExecutionStatus, settle
from models.domain.quantities import Side, signed
from models.tables import Accumulator, Execution, ExecutionReturn, SymbolFreeze
from models.tables_ops import AccountPause
from tasks.balances import BalanceConfig
from tasks.exits import settle_position_order
from tasks.ingestion import execute_if_due, lock_accumulator
from tasks.lineage import first_received_at
from tasks.order_breaker import BreakerConfig
from tasks.ports import BrokerOrder
from tasks.positions import book_fill

log = logging.getLogger(__name__)


class SubmitOutcome(StrEnum):
    MISSING = "missing"
    BUSY = "busy"  # another worker holds the execution's claim right now
    SYMBOL_BUSY = "symbol_busy"  # the symbol has its limit of calls under way: woken when one ends
    SYMBOL_COOLING = "symbol_cooling"  # the symbol's order breaker is open: try again after wait_seconds
    FROZEN = "frozen"  # left pending until the symbol is unfrozen
    WORKING = "working"  # the broker has it and it can still fill: poll again
    SETTLED = "settled"  # filled, partially filled, rejected or cancelled
    WAITING_FOR_BALANCE = "waiting_for_balance"  # a buy left pending until the account's balance is known
    ACCOUNT_PAUSED = "account_paused"  # the broker refused the account: held until its probe succeeds
    LEASE_LOST = "lease_lost"  # the call outlived its claim and another worker took over: it records


@dataclass(frozen=True)
class ExecutionConfig:
    threshold: Decimal
    rejection_backoff_seconds: int
    freeze_after_rejections: int
    min_position_value: Decimal = Decimal(0)  # exit remainders worth less are closed (0 disables)
    balances: BalanceConfig = field(default_factory=BalanceConfig)  # buys wait for a balance younger than its max age
    alert_after_unknown_outcomes: int = 5  # answers in a row that say nothing, then one ERROR for a person
    account_pause_seconds: int = 300  # a refused account waits this long before one probe order
    # How long a claim lasts without a heartbeat; a live call renews it every third of it, so a
    # worker that died mid-call lets its execution go within this.
    claim_lease_seconds: int = 3
    calls_per_symbol: int = 2  # claims of one symbol live at once (a sick symbol's share of the pool)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)  # per-symbol breaker of order calls


@dataclass(frozen=True)
class SubmitResult:
    outcome: SubmitOutcome
    # Executions created in the same transaction from shares put back (enqueue after commit).
    follow_ups: list[uuid.UUID] = field(default_factory=list)
    # Set when this record made the order known at the broker (submitted_at): how long after
    # its oldest direct trade was received (tasks.lineage.first_received_at); None otherwise.
    submitted_wait: timedelta | None = None
    wait_seconds: int = 0  # SYMBOL_COOLING: until the symbol's breaker lets a probe through


def note_unknown_outcome(execution: Execution, error: Exception, config: ExecutionConfig, now: datetime) -> None:
    """An answer that said nothing: the execution stays in flight; a person hears of it once."""
    execution.unknown_outcomes += 1
    execution.last_error = f"{type(error).__name__}: {error}"
    execution.updated_at = now
    if execution.unknown_outcomes == config.alert_after_unknown_outcomes:
        log.error(
            "%s %s %s: %d broker answers in a row said nothing about order %s; it is held in flight"
            " (never re-ordered) until the broker answers: %s",
            execution.side,
            execution.quantity,
            execution.symbol,
            execution.unknown_outcomes,
            execution.client_order_id,
            execution.last_error,
            extra={"symbol": execution.symbol, "execution_id": str(execution.id)},
        )


class Access(StrEnum):
    OPEN = "open"
    PROBE = "probe"  # paused, and this execution is the one probe after the pause
    PAUSED = "paused"


def account_access(session: Session, account: str, config: ExecutionConfig, now: datetime) -> Access:
    if session.get(AccountPause, account) is None:
        return Access.OPEN
    # One probe per pause period across the fleet: whoever moves probe_after on gets to ask.
    claimed = session.execute(
        update(AccountPause)
        .where(AccountPause.account == account, AccountPause.probe_after <= now)
        .values(probe_after=now + timedelta(seconds=config.account_pause_seconds))
        .returning(AccountPause.account)
    ).first()
    return Access.PAUSED if claimed is None else Access.PROBE


def pause_account(session: Session, execution: Execution, reason: str, config: ExecutionConfig, now: datetime) -> None:
    """The broker refused the account: hold every order of it, alert once, freeze no symbol."""
    probe_after = now + timedelta(seconds=config.account_pause_seconds)
    refusals = session.scalar(
        insert(AccountPause)
        .values(account=execution.account, reason=reason, paused_at=now, probe_after=probe_after, refusals=1)
        .on_conflict_do_update(
            index_elements=["account"],
            set_={"reason": reason, "probe_after": probe_after, "refusals": AccountPause.refusals + 1},
        )
        .returning(AccountPause.refusals)
    )
    execution.last_error = f"account {execution.account} paused: {reason}"
    execution.updated_at = now
    context = {"symbol": execution.symbol, "execution_id": str(execution.id)}
    if refusals == 1:
        log.error(
            "account %s paused: the broker refused the account, not the order (%s); its orders are held"
            " and one probe is sent after %s s; no symbol is frozen for it",
            execution.account,
            reason,
            config.account_pause_seconds,
            extra=context,
        )
    else:
        log.warning("account %s still refused (%d in a row): %s", execution.account, refusals, reason, extra=context)


def lift_pause(session: Session, account: str) -> None:
    lifted = session.execute(
        delete(AccountPause).where(AccountPause.account == account).returning(AccountPause.account)
    )
    if lifted.first() is not None:
        log.info("account %s: the broker accepted an order again; pause lifted", account)


@dataclass(frozen=True)
class ReadAlong:
    """What the caller read with the execution's locked row, so recording needs no more reads:
    its ``first_received_at`` (``tasks.lineage.first_received_of``) and whether its symbol is in
    a rejection backoff (``backoff_of``)."""

    first_received: datetime | None
    in_backoff: bool


def backoff_of(symbol: SQLColumnExpression[str]) -> Exists:
    """True while the symbol's accumulator counts rejections or holds orders back."""
    return exists().where(
        Accumulator.symbol == symbol,
        or_(Accumulator.consecutive_rejections != 0, Accumulator.hold_until.is_not(None)),
    )


def record_broker_order(
    session: Session,
    execution: Execution,
    order: BrokerOrder,
    config: ExecutionConfig,
    now: datetime,
    read_along: ReadAlong | None = None,
) -> SubmitResult:
    """Write the broker's answer onto the execution; put unfilled shares back when it is over."""
    settlement = settle(order.status, execution.quantity, order.filled_quantity)
    first_known = execution.submitted_at is None and execution.source == "hedge"  # sales, exits: no trades
    wait = None
    if first_known:
        received = first_received_at(session, execution.id) if read_along is None else read_along.first_received
        wait = None if received is None else now - received
    book_fill(session, execution, order.filled_quantity, order.filled_average_price, now)
    execution.broker_order_id = order.id
    execution.filled_quantity = order.filled_quantity
    execution.average_price = order.filled_average_price
    execution.status = settlement.status.value
    execution.submitted_at = execution.submitted_at or now
    execution.updated_at = now
    execution.last_error = None
    execution.unknown_outcomes = 0
    log_broker_order(execution.side, execution.quantity, execution.symbol, execution.id, order)
    if settlement.status is ExecutionStatus.SUBMITTED:
        return SubmitResult(SubmitOutcome.WORKING, submitted_wait=wait)
    reason = f"{settlement.status.value} by broker (order {order.id}, status {order.status})"
    return SubmitResult(
        SubmitOutcome.SETTLED,
        _after_settlement(session, execution, settlement.unfilled, reason, config, now, read_along),
        submitted_wait=wait,
    )


def log_broker_order(side: str, quantity: Decimal, symbol: str, execution_id: uuid.UUID, order: BrokerOrder) -> None:
    log.info(
        "%s %s %s: broker order %s is %s, filled %s",
        side,
        quantity,
        symbol,
        order.id,
        order.status,
        order.filled_quantity,
        extra={"symbol": symbol, "execution_id": str(execution_id)},
    )


def settle_refused(
    session: Session, execution: Execution, reason: str, config: ExecutionConfig, now: datetime
) -> list[uuid.UUID]:
    log.warning(
        "%s %s %s refused: %s",
        execution.side,
        execution.quantity,
        execution.symbol,
        reason,
        extra={"symbol": execution.symbol, "execution_id": str(execution.id)},
    )
    execution.status = ExecutionStatus.REJECTED.value
    execution.last_error = reason
    execution.updated_at = now
    return _after_settlement(session, execution, execution.quantity, f"rejected: {reason}", config, now)


def _after_settlement(
    session: Session,
    execution: Execution,
    unfilled: Decimal,
    reason: str,
    config: ExecutionConfig,
    now: datetime,
    read_along: ReadAlong | None = None,
) -> list[uuid.UUID]:
    """What a finished order leads to; returns executions created in this commit."""
    if execution.source != "hedge":
        return settle_position_order(session, execution, unfilled, config.min_position_value, now)
    in_backoff = _in_backoff(session, execution.symbol) if read_along is None else read_along.in_backoff
    if not unfilled and not in_backoff:
        # A complete fill with no rejection streak changes nothing on the net: leave the row
        # unlocked rather than queue behind the symbol's accumulate run.
        return []
    accumulator = lock_accumulator(session, execution.symbol)
    if unfilled:
        _put_back(session, accumulator, execution, unfilled, reason, now)
    if execution.filled_quantity > 0:
        accumulator.consecutive_rejections = 0
        accumulator.hold_until = None
    else:
        _back_off(session, accumulator, config, now, reason=reason)
    # Re-order shares put back in this same commit, so no quiet moment shows |net| >= threshold.
    return execute_if_due(session, accumulator, config.threshold, now)


def _in_backoff(session: Session, symbol: str) -> bool:
    return bool(session.scalar(select(backoff_of(literal(symbol, Accumulator.symbol.type)))))


def _put_back(
    session: Session,
    accumulator: Accumulator,
    execution: Execution,
    unfilled: Decimal,
    reason: str,
    now: datetime,
) -> None:
    """Unfilled shares return to the net as an open portion; the unique key makes it once per execution."""
    quantity = signed(Side(execution.side), unfilled)
    inserted = session.scalar(
        insert(ExecutionReturn)
        .values(
            execution_id=execution.id,
            symbol=execution.symbol,
            quantity=quantity,
            open_quantity=quantity,
            reason=reason,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["execution_id"])
        .returning(ExecutionReturn.id)
    )
    if inserted is not None:
        accumulator.net_quantity += quantity
        accumulator.updated_at = now


def _back_off(
    session: Session, accumulator: Accumulator, config: ExecutionConfig, now: datetime, *, reason: str
) -> None:
    """Repeated failures must not loop: wait longer after each, then freeze the symbol."""
    accumulator.consecutive_rejections += 1
    failures = accumulator.consecutive_rejections
    delay = config.rejection_backoff_seconds * 2 ** min(failures - 1, 10)
    accumulator.hold_until = now + timedelta(seconds=delay)
    if failures >= config.freeze_after_rejections:
        session.execute(
            insert(SymbolFreeze)
            .values(
                symbol=accumulator.symbol,
                reason=f"{failures} orders in a row failed; last: {reason}",
                source="rejections",
                frozen_at=now,
            )
            .on_conflict_do_nothing(index_elements=["symbol"])
        )
