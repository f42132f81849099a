"""The incremental audit and its background verifier, against real PostgreSQL.

Tampering goes behind the triggers' back (session_replication_role = replica), as a bug in a
writer or a hand edit without triggers would: the running totals no longer follow the rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2
from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Execution
from models.tables_audit import AuditCheckpoint
from tasks.audit import AuditReport, audit_books
from tasks.audit_verifier import run_pass, verify_step
from tasks.execution import ExecutionConfig, submit_execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tests.support.fakes import FakeBrokerage
from tests.support.totals import running_and_recomputed

D = Decimal
NOW = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
ACCUMULATION = AccumulationConfig(D(1), 1000, frozenset())
EXECUTION = ExecutionConfig(D(1), rejection_backoff_seconds=0, freeze_after_rejections=1000)
DAY = timedelta(days=1)


def trades(prefix: str, symbol: str, quantities: list[str], side: Side = Side.BUY) -> list[IncomingTrade]:
    return [IncomingTrade(f"{prefix}{n}", symbol, side, D(q), D("100"), NOW) for n, q in enumerate(quantities)]


def settle(uow: UnitOfWork, broker: FakeBrokerage, batch: list[IncomingTrade]) -> None:
    """Store, accumulate and send every execution the trades call for (and what comes back)."""
    store_trades(uow, batch)
    for symbol in sorted({t.symbol for t in batch}):
        pending = accumulate_symbol(uow, symbol, ACCUMULATION, NOW).executions
        while pending:
            pending += submit_execution(uow, broker.by_account, pending.pop(), EXECUTION, NOW).follow_ups


def history(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    settle(uow, broker, trades("a", "AAPL", ["0.75", "1.5", "2.25", "0.5"]))
    settle(uow, broker, trades("m", "MSFT", ["3.5", "0.25"], Side.SELL))


def audit(uow: UnitOfWork) -> AuditReport:
    return audit_books(uow, D(1), NOW)


def problems(report: AuditReport) -> list[str]:
    return [p for s in report.symbols for p in s.problems]


def behind_the_triggers(url: str, statement: str, *args: object) -> None:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")  # no trigger fires
            cursor.execute(statement, args)
        connection.commit()
    finally:
        connection.close()


def test_running_totals_match_every_row_after_fills_partial_fills_and_rejections(
    uow: UnitOfWork, clean_database: str
) -> None:
    history(uow)
    settle(uow, FakeBrokerage(fill_ratio=D("0.5")), trades("p", "NVDA", ["2.5", "1.75"]))
    rejecting = FakeBrokerage()
    rejecting.refuse_symbols.add("TSLA")
    settle(uow, rejecting, trades("r", "TSLA", ["1.25"]))
    running, recomputed = running_and_recomputed(clean_database)
    assert running == recomputed
    assert set(recomputed) == {"AAPL", "MSFT", "NVDA", "TSLA"}
    assert audit(uow).ok, problems(audit(uow))


def test_a_tampered_new_trade_is_found_by_the_next_audit(uow: UnitOfWork, clean_database: str) -> None:
    history(uow)
    run_pass(uow, NOW)
    settle(uow, FakeBrokerage(), trades("n", "AAPL", ["0.5", "0.125"]))
    assert audit(uow).ok
    behind_the_triggers(
        clean_database, "UPDATE trades SET quantity = quantity + 1, open_quantity = open_quantity + 1 WHERE id = 'n1'"
    )
    report = audit(uow)
    assert not report.ok
    assert any(p.startswith("running total of applied trades") for p in problems(report)), problems(report)


def test_a_tampered_old_trade_is_found_on_the_verifiers_next_pass(uow: UnitOfWork, clean_database: str) -> None:
    history(uow)
    run_pass(uow, NOW)
    behind_the_triggers(clean_database, "UPDATE trades SET quantity = quantity + 2 WHERE id = 'a0'")
    assert audit(uow).ok  # the audit reads no row below the checkpoint: that is the verifier's job
    run_pass(uow, NOW)
    report = audit(uow)
    assert not report.ok
    assert [s.symbol for s in report.symbols if not s.balanced] == ["AAPL"]
    assert any(p.startswith("running total of applied trades") for p in problems(report)), problems(report)


def test_an_old_execution_whose_contributions_were_changed_is_found_on_the_next_pass(
    uow: UnitOfWork, clean_database: str
) -> None:
    history(uow)
    run_pass(uow, NOW)
    behind_the_triggers(
        clean_database,
        "UPDATE contributions SET quantity = quantity / 2 WHERE id = (SELECT min(c.id) FROM contributions c"
        " JOIN executions e ON e.id = c.execution_id WHERE e.symbol = 'MSFT')",
    )
    assert audit(uow).ok
    run_pass(uow, NOW)
    report = audit(uow)
    assert any("contributions do not add up" in p for p in problems(report)), problems(report)


def test_checkpoint_stays_below_a_waiting_trade_so_applying_it_later_is_no_false_alarm(
    uow: UnitOfWork, clean_database: str
) -> None:
    store_trades(uow, trades("w", "AAPL", ["0.5"]))
    # Hold the waiting trade: the accumulate run skips it (SKIP LOCKED) and applies the later ones.
    holder = psycopg2.connect(clean_database)
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT seq FROM trades WHERE id = 'w0' FOR UPDATE")
            [(waiting_seq,)] = cursor.fetchall()
            settle(uow, FakeBrokerage(), trades("a", "AAPL", ["1.5", "0.25"]))
    finally:
        holder.rollback()
        holder.close()
    run_pass(uow, NOW)
    with uow:
        checkpoint = uow.session.scalars(select(AuditCheckpoint).where(AuditCheckpoint.symbol == "AAPL")).one()
        assert checkpoint.trade_seq == waiting_seq - 1
    settle(uow, FakeBrokerage(), [])
    accumulate_symbol(uow, "AAPL", ACCUMULATION, NOW)
    report = audit(uow)
    assert report.ok, problems(report)
    assert report.symbols[0].trades_total == D("2.25")


def test_the_verifier_walks_history_in_bounded_chunks_and_checkpoints_every_symbol(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    for symbol in ("AAA", "BBB", "CCC", "DDD"):
        settle(uow, broker, trades(symbol, symbol, ["0.5"] * 9))
    walked: list[int] = []
    now, outcome = NOW, ""
    while outcome != "finished":
        step = verify_step(uow, now, 10, DAY, timedelta(seconds=1))
        outcome, now = step.outcome, now + timedelta(seconds=2)
        walked.append(step.trades)
        assert step.trades <= 10 and step.executions <= 10
    assert sum(walked) == 36 and len([n for n in walked if n]) == 4
    with uow:
        checkpoints = uow.session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.symbol)).all()
        executions = uow.session.scalar(select(Execution.seq).order_by(Execution.seq.desc()).limit(1))
    assert [(c.symbol, c.trades_applied, c.filled) for c in checkpoints] == [
        (s, D("4.5"), D(4)) for s in ("AAA", "BBB", "CCC", "DDD")
    ]
    assert {c.execution_seq for c in checkpoints} == {executions}
    assert audit(uow).ok


def test_the_chunk_grows_so_a_pass_ends_within_the_period(uow: UnitOfWork) -> None:
    settle(uow, FakeBrokerage(), trades("a", "AAPL", ["0.5"] * 40))
    verify_step(uow, NOW, 1, DAY, DAY)  # starts the pass
    # 40 trades and the one execution they made, in a period of 4 steps: ceil(41 / 4) rows a step.
    step = verify_step(uow, NOW + timedelta(seconds=2), 1, timedelta(seconds=4), timedelta(seconds=1))
    assert (step.trades, step.executions) == (11, 1)


def test_audit_counts_waiting_trades_and_is_not_ok_once_one_waited_too_long(uow: UnitOfWork) -> None:
    store_trades(uow, trades("w", "AAPL", ["0.5", "0.25"]))
    now = datetime.now(UTC)
    fresh = audit_books(uow, D(1), now, max_waiting_seconds=60)
    assert fresh.ok
    [symbol] = fresh.symbols
    assert (symbol.waiting, symbol.oldest_waiting_s is not None) == (2, True)
    late = audit_books(uow, D(1), now + timedelta(seconds=120), max_waiting_seconds=60)
    assert not late.ok
    assert late.symbols[0].oldest_waiting_s >= 120
    assert set(late.as_json()["symbols"][0]) >= {
        "symbol",
        "trades_total",
        "executed_total",
        "in_flight_total",
        "residual",
        "balanced",
        "waiting",
        "oldest_waiting_s",
    }
