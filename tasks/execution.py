"""Execution: send an execution's whole-share order to the brokerage exactly once (SPEC 1.2).

The order is always looked up by its ``client_order_id`` before anything is sent, so a
redelivered task, a timeout or a crash after the broker accepted never leads to a second
order. Unfilled shares of a finished order go back into the symbol's net, with the reason;
orders that keep failing back the symbol off and then freeze it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.execution_state import ExecutionStatus, settle
from models.domain.quantities import Side, signed
from models.tables import Accumulator, Execution, ExecutionReturn, SymbolFreeze
from tasks.balances import BalanceConfig, BalanceUnknown, Sleep, require_known_balance
from tasks.exits import settle_position_order
from tasks.ingestion import execute_if_due
from tasks.positions import book_fill
from workers.brokerage import (
    Brokerage,
    BrokerOrder,
    DuplicateClientOrderId,
    InvalidOrder,
    OrderRequest,
    TemporaryError,
)

log = logging.getLogger(__name__)


class SubmitOutcome(StrEnum):
    MISSING = "missing"
    BUSY = "busy"  # another worker holds the execution right now
    FROZEN = "frozen"  # left pending until the symbol is unfrozen
    WORKING = "working"  # the broker has it and it can still fill: poll again
    SETTLED = "settled"  # filled, partially filled, rejected or cancelled
    WAITING_FOR_BALANCE = "waiting_for_balance"  # a buy left pending until the account's balance is known


@dataclass(frozen=True)
class ExecutionConfig:
    threshold: Decimal
    rejection_backoff_seconds: int
    freeze_after_rejections: int
    min_position_value: Decimal = Decimal(0)  # exit remainders worth less are closed (0 disables)
    balances: BalanceConfig = field(default_factory=BalanceConfig)  # buys wait for a balance younger than its max age


@dataclass(frozen=True)
class SubmitResult:
    outcome: SubmitOutcome
    # Executions created in the same transaction from shares put back (enqueue after commit).
    follow_ups: list[uuid.UUID] = field(default_factory=list)


def submit_execution(
    uow: UnitOfWork,
    brokerages: Callable[[str], Brokerage],
    execution_id: uuid.UUID,
    config: ExecutionConfig,
    now: datetime,
    sleep: Sleep = time.sleep,
) -> SubmitResult:
    """``brokerages`` gives the adapter of the execution's account; ``sleep`` waits between balance fetches."""
    with uow:
        session = uow.session
        # The row lock is held across the broker call so two workers never act on one execution.
        execution = session.scalars(
            select(Execution).where(Execution.id == execution_id).with_for_update(skip_locked=True)
        ).one_or_none()
        if execution is None:
            exists = session.scalar(select(Execution.id).where(Execution.id == execution_id))
            return SubmitResult(SubmitOutcome.BUSY if exists else SubmitOutcome.MISSING)
        if not ExecutionStatus(execution.status).in_flight:
            return SubmitResult(SubmitOutcome.SETTLED)
        if session.get(SymbolFreeze, execution.symbol) is not None:
            return SubmitResult(SubmitOutcome.FROZEN)
        try:
            order = _find_or_place_order(session, brokerages(execution.account), execution, config, now, sleep)
        except BalanceUnknown as waiting:
            execution.last_error = str(waiting)
            execution.updated_at = now
            uow.commit()
            return SubmitResult(SubmitOutcome.WAITING_FOR_BALANCE)
        except InvalidOrder as refused:
            follow_ups = _settle_refused(session, execution, str(refused), config, now)
            uow.commit()
            return SubmitResult(SubmitOutcome.SETTLED, follow_ups)
        except TemporaryError as unknown:
            execution.last_error = f"{type(unknown).__name__}: {unknown}"
            execution.updated_at = now
            uow.commit()
            raise
        result = record_broker_order(session, execution, order, config, now)
        uow.commit()
        return result


def _find_or_place_order(
    session: Session, brokerage: Brokerage, execution: Execution, config: ExecutionConfig, now: datetime, sleep: Sleep
) -> BrokerOrder:
    order = brokerage.get_order_by_client_order_id(execution.client_order_id)
    if order is not None:
        return order
    if execution.side == Side.BUY.value:
        # A buy increases exposure: never sent on a balance older than its max age (SPEC 1.5).
        # Sells only reduce it and must go out even when the balance cannot be read.
        require_known_balance(session, brokerage, execution.account, config.balances, now, sleep)
    execution.submit_attempts += 1
    request = OrderRequest(execution.client_order_id, execution.symbol, execution.side, execution.quantity)
    try:
        return brokerage.submit_order(request)
    except DuplicateClientOrderId:
        # Our earlier request reached the broker after all: read it back, never resend.
        order = brokerage.get_order_by_client_order_id(execution.client_order_id)
        if order is None:
            raise TemporaryError("broker reports the client order id taken but cannot find it") from None
        return order


def record_broker_order(
    session: Session, execution: Execution, order: BrokerOrder, config: ExecutionConfig, now: datetime
) -> SubmitResult:
    """Write the broker's answer onto the execution; put unfilled shares back when it is over."""
    settlement = settle(order.status, execution.quantity, order.filled_quantity)
    book_fill(session, execution, order.filled_quantity, order.filled_average_price, now)
    execution.broker_order_id = order.id
    execution.filled_quantity = order.filled_quantity
    execution.average_price = order.filled_average_price
    execution.status = settlement.status.value
    execution.submitted_at = execution.submitted_at or now
    execution.updated_at = now
    execution.last_error = None
    log.info(
        "%s %s %s: broker order %s is %s, filled %s",
        execution.side,
        execution.quantity,
        execution.symbol,
        order.id,
        order.status,
        order.filled_quantity,
        extra={"symbol": execution.symbol, "execution_id": str(execution.id)},
    )
    if settlement.status is ExecutionStatus.SUBMITTED:
        return SubmitResult(SubmitOutcome.WORKING)
    reason = f"{settlement.status.value} by broker (order {order.id}, status {order.status})"
    return SubmitResult(
        SubmitOutcome.SETTLED, _after_settlement(session, execution, settlement.unfilled, reason, config, now)
    )


def _settle_refused(
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
) -> list[uuid.UUID]:
    """What a finished order leads to; returns executions created in this commit."""
    if execution.source != "hedge":
        return settle_position_order(session, execution, unfilled, config.min_position_value, now)
    if not unfilled and not _in_backoff(session, execution.symbol):
        # A complete fill with no rejection streak changes nothing on the net: leave the row
        # unlocked rather than queue behind the symbol's accumulate run.
        return []
    accumulator = _lock_accumulator(session, execution.symbol)
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
    streak = session.execute(
        select(Accumulator.consecutive_rejections, Accumulator.hold_until).where(Accumulator.symbol == symbol)
    ).one()
    return bool(streak.consecutive_rejections or streak.hold_until is not None)


def _lock_accumulator(session: Session, symbol: str) -> Accumulator:
    return session.scalars(select(Accumulator).where(Accumulator.symbol == symbol).with_for_update()).one()


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
