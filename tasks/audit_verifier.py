"""Background verifier: re-reads the whole history in bounded chunks and records what it proved.

A pass walks trades and executions in (symbol, seq) order, a chunk per Beat tick, summing
every settled row up to the pass's targets (the seqs drawn when it started). A symbol's walk
stops before its first unsettled row (a waiting trade, an in-flight execution): such a row
can still change, so it and the rows after it stay above the checkpoint, where every audit
reads them. When both walks are done the sums become the symbols' checkpoints
(``audit_checkpoints``); from then on the audit compares the running totals with the
checkpoint plus the rows above it, so a row changed behind the triggers' back anywhere in
history shows up at the latest one pass later. Each step is one short transaction on the
ops queue; the chunk grows with history so that a pass ends within the configured period.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.quantities import ZERO
from models.tables_audit import AuditVerifierPass, AuditVerifierSums

# A row drawing its seq gets its transaction id a moment later at most: wait this long too.
_SETTLE_DELAY = timedelta(seconds=2)

_TARGETS = text(
    "SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('trades', 'seq')::regclass), 0) AS trades,"
    " coalesce(pg_sequence_last_value(pg_get_serial_sequence('executions', 'seq')::regclass), 0) AS executions,"
    " txid_current() AS xid"
)
_OLDEST_RUNNING_XID = text("SELECT txid_snapshot_xmin(txid_current_snapshot())")
_TRADE_CHUNK = text(
    "SELECT symbol, seq, status, side, quantity FROM trades"
    " WHERE (symbol, seq) > (:symbol, :seq) ORDER BY symbol, seq LIMIT :n"
)
_EXECUTION_CHUNK = text(
    "SELECT id, symbol, seq, status, side, filled_quantity, source FROM executions"
    " WHERE (symbol, seq) > (:symbol, :seq) ORDER BY symbol, seq LIMIT :n"
)
# Per execution of the chunk, through the indexes (the ids drive, never a scan of all executions).
_MISMATCHED = text(
    "SELECT e.id FROM unnest(CAST(:ids AS uuid[])) AS chunk (id) JOIN executions e ON e.id = chunk.id"
    " CROSS JOIN LATERAL (SELECT coalesce(sum(quantity), 0) AS taken FROM"
    " (SELECT quantity FROM contributions WHERE execution_id = e.id"
    " UNION ALL SELECT quantity FROM archived_contributions WHERE execution_id = e.id) c) t"
    " WHERE t.taken <> CASE WHEN e.side = 'buy' THEN e.quantity ELSE -e.quantity END"
)
_INSTALL_CHECKPOINTS = text(
    """
    INSERT INTO audit_checkpoints AS c (symbol, trade_seq, execution_seq, trades_applied, filled, problems, verified_at)
    SELECT symbol, coalesce(trade_limit, :trade_target), coalesce(execution_limit, :execution_target),
           trades_applied, filled, problems, :now
    FROM audit_verifier_sums ORDER BY symbol
    ON CONFLICT (symbol) DO UPDATE SET
        trade_seq = excluded.trade_seq, execution_seq = excluded.execution_seq,
        trades_applied = excluded.trades_applied, filled = excluded.filled,
        problems = excluded.problems, verified_at = excluded.verified_at
    """
)
# A symbol with no row left (all archived) is proved empty up to the targets.
_EMPTY_CHECKPOINTS = text(
    "UPDATE audit_checkpoints SET trade_seq = :trade_target, execution_seq = :execution_target,"
    " trades_applied = 0, filled = 0, problems = NULL, verified_at = :now"
    " WHERE symbol NOT IN (SELECT symbol FROM audit_verifier_sums)"
)


@dataclass(frozen=True)
class VerifyStep:
    outcome: str  # busy, waiting, walked, finished
    trades: int = 0
    executions: int = 0


def verify_step(uow: UnitOfWork, now: datetime, chunk_rows: int, period: timedelta, interval: timedelta) -> VerifyStep:
    """One bounded chunk of the pass under way (starting one if none is)."""
    with uow:
        session = uow.session
        state = _claim_state(session)
        if state is None:
            return VerifyStep("busy")
        if state.started_at is None:
            _start_pass(session, state, now)
            uow.commit()
            return VerifyStep("started")
        if not _older_transactions_done(session, state, now):
            return VerifyStep("waiting")
        rows = max(chunk_rows, math.ceil((state.trade_target + state.execution_target) * (interval / period)))
        trades = 0 if state.trades_done else _walk_trades(session, state, rows)
        executions = 0 if state.executions_done else _walk_executions(session, state, rows)
        outcome = "walked"
        if state.trades_done and state.executions_done:
            _finish_pass(session, state, now)
            outcome = "finished"
        uow.commit()
    return VerifyStep(outcome, trades, executions)


def run_pass(uow: UnitOfWork, now: datetime, chunk_rows: int = 20_000) -> int:
    """Steps until a whole pass (started now) has finished; for operators, tests and benches."""
    abort_pass(uow)
    steps = 0
    day = timedelta(days=1)
    while (outcome := verify_step(uow, now, chunk_rows, day, day).outcome) != "finished":
        steps += 1
        now = now + _SETTLE_DELAY  # the pass's own clock: no real sleep for the delay
        if outcome in ("busy", "waiting"):
            time.sleep(0.05)  # a Beat step or an older transaction is still under way
    return steps


def abort_pass(uow: UnitOfWork) -> None:
    """Forget the pass under way: the next step starts anew."""
    with uow:
        reset_pass(uow.session)
        uow.commit()


def reset_pass(session: Session) -> None:
    """In the caller's transaction, which keeps the verifier out (row lock) until it commits."""
    state = _claim_state(session, wait=True)
    assert state is not None
    state.started_at = None
    session.execute(text("DELETE FROM audit_verifier_sums"))
    session.flush()


def _claim_state(session: Session, wait: bool = False) -> AuditVerifierPass | None:
    session.execute(insert(AuditVerifierPass).values(id=1).on_conflict_do_nothing(index_elements=["id"]))
    locked = select(AuditVerifierPass).where(AuditVerifierPass.id == 1).with_for_update(skip_locked=not wait)
    return session.scalars(locked).one_or_none()


def _start_pass(session: Session, state: AuditVerifierPass, now: datetime) -> None:
    targets = session.execute(_TARGETS).one()
    session.execute(text("DELETE FROM audit_verifier_sums"))
    state.started_at = now
    state.start_xid = targets.xid
    state.trade_target, state.execution_target = targets.trades, targets.executions
    state.trade_cursor_symbol = state.execution_cursor_symbol = ""
    state.trade_cursor_seq = state.execution_cursor_seq = 0
    state.trades_done = state.executions_done = False


def _older_transactions_done(session: Session, state: AuditVerifierPass, now: datetime) -> bool:
    """Rows that drew a seq up to the targets are committed (or gone): none is missed unseen."""
    assert state.started_at is not None and state.start_xid is not None
    if now - state.started_at < _SETTLE_DELAY:
        return False
    return bool(session.scalar(_OLDEST_RUNNING_XID) > state.start_xid)


def _walk_trades(session: Session, state: AuditVerifierPass, n: int) -> int:
    cursor = {"symbol": state.trade_cursor_symbol or "", "seq": state.trade_cursor_seq or 0, "n": n}
    rows = session.execute(_TRADE_CHUNK, cursor).all()
    sums = _load_sums(session, {r.symbol for r in rows})
    for row in rows:
        entry = sums[row.symbol]
        if row.seq > state.trade_target or entry.trade_limit is not None:
            continue
        if row.status == "received":  # may still change: this symbol's checkpoint stays below it
            entry.trade_limit = row.seq - 1
        elif row.status != "rejected":
            entry.trades_applied += row.quantity if row.side == "buy" else -row.quantity
    if rows:
        state.trade_cursor_symbol, state.trade_cursor_seq = rows[-1].symbol, rows[-1].seq
    state.trades_done = len(rows) < n
    return len(rows)


def _walk_executions(session: Session, state: AuditVerifierPass, n: int) -> int:
    cursor = {"symbol": state.execution_cursor_symbol or "", "seq": state.execution_cursor_seq or 0, "n": n}
    rows = session.execute(_EXECUTION_CHUNK, cursor).all()
    sums = _load_sums(session, {r.symbol for r in rows})
    summed: list[Any] = []
    for row in rows:
        entry = sums[row.symbol]
        if row.source != "hedge" or row.seq > state.execution_target or entry.execution_limit is not None:
            continue
        if row.status in ("pending", "submitted"):  # may still fill: the checkpoint stays below it
            entry.execution_limit = row.seq - 1
            continue
        entry.filled += row.filled_quantity if row.side == "buy" else -row.filled_quantity
        summed.append(row)
    _note_contribution_mismatches(session, summed, sums)
    if rows:
        state.execution_cursor_symbol, state.execution_cursor_seq = rows[-1].symbol, rows[-1].seq
    state.executions_done = len(rows) < n
    return len(rows)


def _note_contribution_mismatches(session: Session, rows: Sequence[Any], sums: dict[str, AuditVerifierSums]) -> None:
    if not rows:
        return
    bad = {str(r[0]) for r in session.execute(_MISMATCHED, {"ids": [str(r.id) for r in rows]})}
    for row in rows:
        if str(row.id) in bad:
            entry = sums[row.symbol]
            found = f"execution {row.id} contributions do not add up"
            entry.problems = f"{entry.problems}\n{found}" if entry.problems else found


def _load_sums(session: Session, symbols: set[str]) -> dict[str, AuditVerifierSums]:
    """The pass's sums of these symbols, created at zero on first sight (flushed on commit)."""
    found = {
        s.symbol: s for s in session.scalars(select(AuditVerifierSums).where(AuditVerifierSums.symbol.in_(symbols)))
    }
    for symbol in symbols - found.keys():
        found[symbol] = AuditVerifierSums(symbol=symbol, trades_applied=ZERO, filled=ZERO)
        session.add(found[symbol])
    return found


def _finish_pass(session: Session, state: AuditVerifierPass, now: datetime) -> None:
    session.flush()
    targets = {"trade_target": state.trade_target, "execution_target": state.execution_target, "now": now}
    session.execute(_INSTALL_CHECKPOINTS, targets)
    session.execute(_EMPTY_CHECKPOINTS, targets)
    session.execute(text("DELETE FROM audit_verifier_sums"))
    state.started_at = None
    state.passes += 1
    state.last_finished_at = now
