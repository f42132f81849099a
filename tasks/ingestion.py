"""Trade ingestion: store webhooks' trades once, then net them per symbol into executions.

``store_webhooks`` runs in the API, for a group of webhooks at a time (workers.api_webhook);
``accumulate_symbol`` runs in the ``ingestion.accumulate`` task, woken after the trades are
committed and by the sweep.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Numeric, String, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import insert, psycopg2
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from models.db import UnitOfWork
from models.domain.accumulation import PlannedExecution, Portion, crosses_threshold, plan_execution
from models.domain.quantities import ZERO
from models.domain.symbols import is_restricted
from models.domain.trades import IncomingTrade
from models.tables import (
    Accumulator,
    ContributionOrigin,
)
from tasks.lineage import origins_of_take


@dataclass(frozen=True)
class StoreResult:
    accepted: int
    duplicates: int
    conflicts: list[str]
    symbols: list[str]  # symbols with newly accepted trades, to wake after commit


def store_trades(uow: UnitOfWork, trades: Sequence[IncomingTrade]) -> StoreResult:
    """Insert unseen trade ids; a known id is a duplicate if its content matches, else a conflict."""
    return store_webhooks(uow, [trades])[0]


def store_webhooks(uow: UnitOfWork, webhooks: Sequence[Sequence[IncomingTrade]]) -> list[StoreResult]:
    """Store several webhooks' trades with one statement (group commit), one result per webhook.

    Each webhook gets the result it would have had alone, had they been stored one after the
    other in the order given: a trade id that two of them carry is accepted by the first and
    known to the second, a duplicate or a conflict by the content the first stored.

    The INSERT and the read of the known ids' stored content are one statement, so that a
    caller who sees an error knows nothing of it was committed (SPEC 6: a webhook 503 means
    nothing was stored; a retry is safe and answers what it finds), except when the connection
    breaks after COMMIT but before its acknowledgement. The one exception: an id inserted by a
    concurrent transaction while this statement ran is not in the statement's snapshot, and is
    read once more after the commit.
    """
    first_by_id: dict[str, IncomingTrade] = {}
    for trades in webhooks:
        for trade in trades:
            first_by_id.setdefault(trade.id, trade)
    with uow:
        # Inserted in id order: concurrent deliveries sharing ids then wait for each other's
        # unique-index entries in the same order instead of deadlocking.
        ordered = [first_by_id[trade_id] for trade_id in sorted(first_by_id)]
        hashes = {trade.id: trade.content_hash() for trade in ordered}
        inserted: set[str] = set()
        stored_hash: dict[str, str] = {}
        for trade_id, was_inserted, content_hash in uow.rows(_INSERT_TRADES_SQL, _trade_columns(ordered, hashes)):
            if was_inserted:
                inserted.add(trade_id)
            else:
                stored_hash[trade_id] = content_hash
        raced = sorted(first_by_id.keys() - inserted - stored_hash.keys())
        if raced:
            stored_hash.update(uow.rows(_STORED_HASHES_SQL, {"ids": raced}))
        uow.commit()
    stored_hash.update((trade_id, hashes[trade_id]) for trade_id in inserted)
    claimed: set[str] = set()  # inserted ids already accepted by an earlier webhook of this call
    return [_result_of(trades, inserted, claimed, stored_hash) for trades in webhooks]


def _result_of(
    trades: Sequence[IncomingTrade], inserted: set[str], claimed: set[str], stored_hash: dict[str, str]
) -> StoreResult:
    firsts: dict[str, IncomingTrade] = {}
    repeats: list[IncomingTrade] = []
    for trade in trades:
        if trade.id in firsts:
            repeats.append(trade)
        else:
            firsts[trade.id] = trade
    accepted = [t for t in firsts.values() if t.id in inserted and t.id not in claimed]
    claimed.update(t.id for t in accepted)
    accepted_ids = {t.id for t in accepted}
    known = [t for t in firsts.values() if t.id not in accepted_ids] + repeats
    conflicts = [t.id for t in known if stored_hash.get(t.id) != t.content_hash()]
    symbols = sorted({t.symbol for t in accepted})
    return StoreResult(len(accepted), len(known) - len(conflicts), conflicts, symbols)


# One statement text for any batch size, and one parameter: the rows travel as one JSON text,
# which psycopg2 quotes in one go (adapting seven arrays of Decimals and datetimes value by
# value cost more than the statement on a 100-trade webhook). Numbers stay exact: decimals go
# as their text and PostgreSQL reads them into numeric. WITH ORDINALITY keeps the rows in the
# order given. The same statement returns the ids it inserted, then, only when some were not
# (a one-time filter: nothing is read when all were new), the stored content hash of every id
# that existed before it began (its snapshot does not see its own inserts).
_INSERT_TRADES = text(
    "WITH incoming AS ("
    " SELECT id, symbol, side, quantity, price, executed_at, content_hash, n"
    " FROM ROWS FROM (json_to_recordset(CAST(:rows AS json)) AS (id text, symbol text, side text,"
    " quantity numeric, price numeric, executed_at timestamptz, content_hash text))"
    " WITH ORDINALITY AS incoming (id, symbol, side, quantity, price, executed_at, content_hash, n)),"
    " inserted AS ("
    " INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash)"
    " SELECT id, symbol, side, quantity, price, executed_at, content_hash FROM incoming ORDER BY n"
    " ON CONFLICT (id) DO NOTHING RETURNING id)"
    " SELECT id, true, CAST(NULL AS text) FROM inserted"
    " UNION ALL"
    " SELECT trades.id, false, trades.content_hash FROM trades"
    " WHERE (SELECT count(*) FROM inserted) < (SELECT count(*) FROM incoming)"
    " AND trades.id = ANY(ARRAY(SELECT id FROM incoming))"
)
# The webhook path runs them at the driver level (UnitOfWork.rows): in psycopg2's spelling.
_INSERT_TRADES_SQL = str(_INSERT_TRADES.compile(dialect=psycopg2.dialect()))
_STORED_HASHES_SQL = "SELECT id, content_hash FROM trades WHERE id = ANY(CAST(%(ids)s AS text[]))"


def _trade_columns(trades: Sequence[IncomingTrade], hashes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The parameters of ``_INSERT_TRADES`` (``hashes``: the trades' content hashes, if known).

    ``rows`` is all the statement reads; ``ids`` (in the rows' order) is for callers that
    compare what RETURNING reported with what was sent.
    """
    rows = [
        {
            "id": t.id,
            "symbol": t.symbol,
            "side": t.side.value,
            "quantity": str(t.quantity),
            "price": str(t.price),
            "executed_at": t.executed_at.isoformat(),
            "content_hash": hashes[t.id] if hashes is not None else t.content_hash(),
        }
        for t in trades
    ]
    return {"rows": json.dumps(rows), "ids": [t.id for t in trades]}


@dataclass(frozen=True)
class AccumulationConfig:
    threshold: Decimal
    batch_size: int
    restricted_symbols: frozenset[str]


@dataclass
class AccumulateResult:
    applied: int = 0
    rejected: int = 0
    trade_ids: list[str] = field(default_factory=list)  # the batch claimed: applied, or rejected
    waits: list[timedelta] = field(default_factory=list)  # accumulated_at - received_at per applied trade
    executions: list[uuid.UUID] = field(default_factory=list)
    more_waiting: bool = False
    busy: bool = False  # another run of this symbol was under way: nothing was done


def accumulate_symbol(
    uow: UnitOfWork,
    symbol: str,
    config: AccumulationConfig,
    now: datetime,
    before_claim: Callable[[], None] = lambda: None,
    on_busy: Callable[[], None] = lambda: None,
) -> AccumulateResult:
    """Apply one batch of the symbol's waiting trades and create the execution the net calls for.

    Everything happens in one transaction: trades claimed, net updated, execution and its
    contributions written. Redelivery is harmless: claimed trades are no longer waiting.
    One run per symbol at a time: a second run returns ``busy`` at once instead of holding a
    pool process while it queues on the accumulator row; the caller makes sure the running
    one (or a next one) sees what the second was woken for. ``before_claim`` runs once, just
    before the first try (the run's lock, claim and net are one statement, ``_CLAIM_AND_NET``).
    ``on_busy`` runs when another run holds the lock, before one more try: if that try fails
    too, the run under way has not committed yet, so it sees whatever ``on_busy`` noted once it has.
    """
    result = AccumulateResult()
    restricted = is_restricted(symbol, config.restricted_symbols)
    claim = _REJECT_AND_LOCK if restricted else _CLAIM_AND_NET
    parameters = {
        "key": accumulate_lock_key(symbol),
        "symbol": symbol,
        "limit": config.batch_size,
        "now": now,
        "reason": "restricted symbol: never traded",
    }
    before_claim()
    with uow:
        session = uow.session
        rows = session.connection().execute(claim, parameters).all()
        if not rows[0].locked:
            on_busy()
            rows = session.connection().execute(claim, parameters).all()
        if rows[0].locked and not restricted and rows[0].net_quantity is None:
            # The symbol's first run: no accumulator row to add to yet. Undo the claim, create
            # the row, claim again (once a symbol; the statement stays the one place that nets).
            session.rollback()
            create = insert(Accumulator).values(symbol=symbol).on_conflict_do_nothing(index_elements=["symbol"])
            session.connection().execute(create)
            rows = session.connection().execute(claim, parameters).all()
        if not rows[0].locked:
            result.busy = True
            return result
        connection = session.connection()
        claimed = sorted((row for row in rows if row.id is not None), key=lambda row: row.seq)
        result.more_waiting = len(claimed) == config.batch_size
        ids = result.trade_ids = [row.id for row in claimed]
        if restricted:
            result.rejected = len(ids)
            uow.commit()
            return result
        if claimed:
            result.applied = len(claimed)
            result.waits = [now - row.received_at for row in claimed]
        # The statement added the claimed trades to the net and locked the row.
        accumulator = Net(symbol, rows[0].net_quantity, rows[0].last_price, rows[0].hold_until)
        before = accumulator.net_quantity
        result.executions += execute_if_due(session, accumulator, config.threshold, now)
        if accumulator.net_quantity != before:  # an execution took its shares from the net
            connection.execute(_WRITE_NET_ONLY, {"of_symbol": symbol, "net": accumulator.net_quantity})
        uow.commit()
    return result


@dataclass
class Net:
    """What an accumulate run reads and changes of the symbol's (locked) accumulator row."""

    symbol: str
    net_quantity: Decimal
    last_price: Decimal | None
    hold_until: datetime | None


_SYMBOL = bindparam("of_symbol", type_=Accumulator.symbol.type)
_NET = bindparam("net", type_=Accumulator.net_quantity.type)
_WRITE_NET_ONLY = update(Accumulator).where(Accumulator.symbol == _SYMBOL).values(net_quantity=_NET)


def accumulate_lock_key(symbol: str) -> int:
    """The symbol's advisory lock key for accumulate runs (64 bits: collisions are not a concern)."""
    digest = hashlib.sha256(f"dustpan:accumulate:{symbol}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_accumulator(session: Session, symbol: str) -> Accumulator:
    """The symbol's accumulator row, locked (created on the symbol's first trades).

    The row lock serialises every change to this symbol's net (trades in, unfilled shares back)."""
    accumulator = session.scalars(_LOCK_ACCUMULATOR, {"symbol": symbol}).one_or_none()
    if accumulator is None:  # the symbol's first trades: one round trip more, once
        session.execute(insert(Accumulator).values(symbol=symbol).on_conflict_do_nothing(index_elements=["symbol"]))
        accumulator = session.scalars(_LOCK_ACCUMULATOR, {"symbol": symbol}).one()
    return accumulator


_LOCK_ACCUMULATOR = (
    select(Accumulator)
    .where(Accumulator.symbol == bindparam("symbol", type_=Accumulator.symbol.type))
    .with_for_update()
)


# An accumulate run's first statement, and its only one until the net reaches the threshold:
# take the symbol's run lock (an advisory lock, tried, never waited on), claim and mark the
# symbol's oldest waiting trades, and add them to the net (the UPDATE locks the accumulator
# row; with nothing claimed the row is locked as it is). When the lock is taken by another run
# nothing else happens: every other part is gated on it (a one-time filter, evaluated first).
# SKIP LOCKED: a trade another transaction holds is left for the next run, never waited on.
# ARRAY(...) runs the claim once, whatever plan the UPDATE gets. One row per claimed trade
# (one with no trade when none was), each with the lock's answer and the net after the claim;
# no net (NULL) while the symbol has no accumulator row yet (its first run creates it).
_LOCKED = "(SELECT locked FROM run_lock)"
_CLAIM_WAITING = (
    "WITH run_lock AS (SELECT pg_try_advisory_xact_lock(:key) AS locked),"
    " claimed AS (UPDATE trades SET {mark}"
    " WHERE id = ANY(ARRAY(SELECT id FROM trades WHERE symbol = :symbol AND status = 'received'"
    " AND " + _LOCKED + " ORDER BY seq LIMIT :limit FOR UPDATE SKIP LOCKED))"
    " RETURNING id, side, quantity, price, received_at, seq){net}"
    " SELECT run_lock.locked, claimed.id, claimed.side, claimed.quantity, claimed.price, claimed.received_at,"
    " claimed.seq{net_columns}"
    " FROM run_lock LEFT JOIN claimed ON true{net_join}"
)
_ADD_CLAIMED_TO_NET = (
    ", moved AS (UPDATE accumulators SET"
    " net_quantity = net_quantity"
    " + (SELECT sum(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END) FROM claimed),"
    " last_price = (SELECT price FROM claimed ORDER BY seq DESC LIMIT 1), updated_at = :now"
    " WHERE symbol = :symbol AND EXISTS (SELECT FROM claimed)"
    " RETURNING net_quantity, last_price, hold_until),"
    " kept AS (SELECT net_quantity, last_price, hold_until FROM accumulators"
    " WHERE symbol = :symbol AND " + _LOCKED + " AND NOT EXISTS (SELECT FROM claimed) FOR UPDATE),"
    " net AS (SELECT * FROM moved UNION ALL SELECT * FROM kept)"
)
_DECIMAL: TypeEngine[Any] = Numeric(38, 18, asdecimal=True)
_CLAIM_ROWS: dict[str, TypeEngine[Any]] = {
    "received_at": DateTime(timezone=True),
    "quantity": _DECIMAL,
    "price": _DECIMAL,
}
_CLAIM_AND_NET = text(
    _CLAIM_WAITING.format(
        mark="status = 'accumulated', accumulated_at = :now,"
        " open_quantity = CASE WHEN side = 'buy' THEN quantity ELSE -quantity END",
        net=_ADD_CLAIMED_TO_NET,
        net_columns=", net.net_quantity, net.last_price, net.hold_until",
        net_join=" LEFT JOIN net ON true",
    )
).columns(
    **_CLAIM_ROWS,
    net_quantity=_DECIMAL,
    last_price=_DECIMAL,
    hold_until=DateTime(timezone=True),
)
# A restricted symbol's run: its trades are rejected, never added to a net.
_REJECT_AND_LOCK = text(
    _CLAIM_WAITING.format(mark="status = 'rejected', status_reason = :reason", net="", net_columns="", net_join="")
).columns(**_CLAIM_ROWS)


def execute_if_due(
    session: Session, accumulator: Accumulator | Net, threshold: Decimal, now: datetime
) -> list[uuid.UUID]:
    """Create the execution the (locked) accumulator's net calls for, unless backoff or a freeze holds it."""
    if not crosses_threshold(accumulator.net_quantity, threshold):
        return []
    if accumulator.hold_until is not None and accumulator.hold_until > now:
        return []
    # The accumulator's new net is written once, at commit: nothing read below depends on it.
    with session.no_autoflush:
        portions = open_portions(session, accumulator.symbol)
        if portions is None:  # frozen
            return []
        execution_id = _create_execution(session, accumulator, portions, threshold, now)
    return [execution_id] if execution_id else []


def open_portions(session: Session, symbol: str) -> list[Portion] | None:
    """The symbol's open quantity, oldest first: unfilled shares put back, then trades; None
    while the symbol is frozen (one query)."""
    rows = session.execute(_OPEN_PORTIONS, {"symbol": symbol}).all()
    if rows and rows[0].source == "freeze":
        return None
    return [Portion(row.source, row.ref, row.open_quantity) for row in rows]


_OPEN_PORTIONS = text(
    "(SELECT 'freeze' AS source, symbol AS ref, CAST(0 AS numeric) AS open_quantity, -1 AS part, 0 AS n"
    " FROM symbol_freezes WHERE symbol = :symbol)"
    " UNION ALL"
    " (SELECT 'return', CAST(id AS text), open_quantity, 0, id"
    " FROM execution_returns WHERE symbol = :symbol AND open_quantity <> 0)"
    " UNION ALL"
    " (SELECT 'trade', id, open_quantity, 1, seq FROM trades WHERE symbol = :symbol AND open_quantity <> 0)"
    " ORDER BY part, n"
).columns(source=String, ref=String, open_quantity=_DECIMAL)


def _create_execution(
    session: Session, accumulator: Accumulator | Net, portions: list[Portion], threshold: Decimal, now: datetime
) -> uuid.UUID | None:
    open_total = sum((p.quantity for p in portions), ZERO)
    if open_total != accumulator.net_quantity:
        # Integrity before availability: never order on a net the portions do not explain.
        raise RuntimeError(f"{accumulator.symbol}: net {accumulator.net_quantity} != open portions {open_total}")
    plan = plan_execution(portions, threshold)
    if plan is None:
        return None
    execution_id = uuid.uuid4()
    _take_from_portions(session, execution_id, accumulator.symbol, plan, now)
    accumulator.net_quantity -= plan.signed_quantity
    return execution_id


# The execution, the shares it takes from each portion and its contributions: one statement,
# whatever the number of portions (psycopg2 runs an executemany as one round trip per row).
# Each portion appears once in a plan, so each row is updated once; the contributions' foreign
# key to the new execution is checked at the end of the statement, when the row is there.
_CREATE_EXECUTION = text(
    "WITH execution AS ("
    " INSERT INTO executions (id, symbol, side, quantity, client_order_id, created_at, updated_at)"
    " VALUES (CAST(:id AS uuid), :symbol, :side, :quantity, :client_order_id, :now, :now) RETURNING id),"
    " from_trades AS ("
    " UPDATE trades SET open_quantity = trades.open_quantity - take.taken"
    " FROM unnest(CAST(:trade_refs AS text[]), CAST(:trade_taken AS numeric[])) AS take (ref, taken)"
    " WHERE trades.id = take.ref RETURNING trades.id),"
    " from_returns AS ("
    " UPDATE execution_returns SET open_quantity = execution_returns.open_quantity - take.taken"
    " FROM unnest(CAST(:return_refs AS bigint[]), CAST(:return_taken AS numeric[])) AS take (ref, taken)"
    " WHERE execution_returns.id = take.ref RETURNING execution_returns.id),"
    " contributed AS ("
    " INSERT INTO contributions (execution_id, trade_id, return_id, quantity)"
    " SELECT (SELECT id FROM execution), part.trade_id, part.return_id, part.quantity"
    " FROM unnest(CAST(:part_trades AS text[]), CAST(:part_returns AS bigint[]), CAST(:part_taken AS numeric[]))"
    " AS part (trade_id, return_id, quantity) RETURNING contributions.id)"
    " SELECT (SELECT count(*) FROM from_trades), (SELECT count(*) FROM from_returns),"
    " (SELECT count(*) FROM contributed)"
)


def _take_from_portions(
    session: Session, execution_id: uuid.UUID, symbol: str, plan: PlannedExecution, now: datetime
) -> None:
    parameters = create_execution_parameters(execution_id, symbol, plan, now)
    taken = session.execute(_CREATE_EXECUTION, parameters).one()
    expected = (len(parameters["trade_refs"]), len(parameters["return_refs"]), len(plan.allocations))
    if tuple(taken) != expected:
        # Integrity before availability: a portion that vanished under us must not be half-taken.
        raise RuntimeError(f"{symbol}: execution {execution_id} took {tuple(taken)} of its plan's portions")
    takes = zip(parameters["return_refs"], parameters["return_taken"], strict=True)
    _record_origins(session, execution_id, list(takes))


def create_execution_parameters(
    execution_id: uuid.UUID, symbol: str, plan: PlannedExecution, now: datetime
) -> dict[str, Any]:
    """The parameters of ``_CREATE_EXECUTION`` for ``plan`` (bench/_pg_ceiling.py runs it too)."""
    allocations = plan.allocations
    trade_takes = [(a.portion.ref, a.taken) for a in allocations if a.portion.kind == "trade"]
    return_takes = [(int(a.portion.ref), a.taken) for a in allocations if a.portion.kind == "return"]
    return {
        "id": str(execution_id),
        "symbol": symbol,
        "side": plan.side.value,
        "quantity": plan.quantity,
        "client_order_id": client_order_id_for(execution_id),
        "now": now,
        "trade_refs": [ref for ref, _ in trade_takes],
        "trade_taken": [amount for _, amount in trade_takes],
        "return_refs": [ref for ref, _ in return_takes],
        "return_taken": [amount for _, amount in return_takes],
        "part_trades": [a.portion.ref if a.portion.kind == "trade" else None for a in allocations],
        "part_returns": [int(a.portion.ref) if a.portion.kind == "return" else None for a in allocations],
        "part_taken": [a.taken for a in allocations],
    }


def _record_origins(session: Session, execution_id: uuid.UUID, return_takes: Sequence[tuple[int, Decimal]]) -> None:
    """Shares taken back from a return keep the trades they came from (the re-execution's lineage)."""
    rows = [
        {
            "execution_id": execution_id,
            "return_id": return_id,
            "trade_id": part.trade_id,
            "quantity": part.quantity if taken > 0 else -part.quantity,
        }
        for return_id, taken in return_takes
        for part in origins_of_take(session, return_id, taken)
    ]
    if rows:
        session.execute(insert(ContributionOrigin), rows)


def client_order_id_for(execution_id: uuid.UUID) -> str:
    """Deterministic: the same execution always reaches the broker under the same id."""
    return f"dp-{execution_id.hex}"
