"""One accumulate run per symbol at a time: a second one leaves at once instead of queueing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import psycopg2
from sqlalchemy import text

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from tasks.ingestion import AccumulationConfig, accumulate_lock_key, accumulate_symbol, store_trades

NOW = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
ACCUMULATION = AccumulationConfig(D(1), 1000, frozenset())


def _trade(n: int, symbol: str = "HOT") -> IncomingTrade:
    return IncomingTrade(f"{symbol}-{n}", symbol, Side.BUY, D("0.75"), D("10"), NOW)


def test_a_second_run_while_one_is_under_way_claims_nothing_and_says_busy(uow: UnitOfWork, clean_database: str) -> None:
    store_trades(uow, [_trade(1), _trade(2)])
    claimed_before: list[bool] = []
    bounced: list[str] = []
    running = psycopg2.connect(clean_database)  # stands for the run under way
    try:
        with running.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (accumulate_lock_key("HOT"),))
            second = accumulate_symbol(
                uow,
                "HOT",
                ACCUMULATION,
                NOW,
                before_claim=lambda: claimed_before.append(True),
                on_busy=lambda: bounced.append("HOT"),
            )
            other_symbol = accumulate_symbol(uow, "COLD", ACCUMULATION, NOW, on_busy=lambda: bounced.append("COLD"))
        running.rollback()
    finally:
        running.close()
    # The wake flag was lowered before the try (claimed_before); the bounce note asks for the next run.
    assert second.busy and second.applied == 0 and second.executions == [] and claimed_before == [True]
    assert bounced == ["HOT"]  # noted once, before its last try; the other symbol never bounced
    assert not other_symbol.busy

    after = accumulate_symbol(uow, "HOT", ACCUMULATION, NOW, before_claim=lambda: claimed_before.append(True))
    assert not after.busy and after.applied == 2 and len(after.executions) == 1 and claimed_before == [True, True]


def test_a_run_that_bounces_while_the_other_commits_runs_after_all(uow: UnitOfWork, clean_database: str) -> None:
    """The run under way committed between the first try and the note: the second try takes
    the lock and claims, so no trade waits on a note that the finished run will never read."""
    store_trades(uow, [_trade(1)])
    running = psycopg2.connect(clean_database)
    try:
        with running.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (accumulate_lock_key("HOT"),))
            result = accumulate_symbol(uow, "HOT", ACCUMULATION, NOW, on_busy=running.rollback)
    finally:
        running.close()
    assert not result.busy and result.applied == 1 and result.trade_ids == ["HOT-1"]


def test_a_run_adds_its_trades_to_the_net_in_the_statement_that_claims_them(uow: UnitOfWork) -> None:
    def net_and_price() -> tuple[D, D]:
        with uow:
            row = uow.session.execute(text("SELECT net_quantity, last_price FROM accumulators WHERE symbol = 'HOT'"))
            return tuple(row.one())  # type: ignore[return-value]

    store_trades(uow, [_trade(1)])
    first = accumulate_symbol(uow, "HOT", ACCUMULATION, NOW)  # creates the accumulator row
    assert (first.applied, first.executions, net_and_price()) == (1, [], (D("0.75"), D("10")))
    store_trades(uow, [_trade(2), IncomingTrade("HOT-3", "HOT", Side.SELL, D("0.6"), D("12"), NOW)])
    second = accumulate_symbol(uow, "HOT", ACCUMULATION, NOW)
    assert (second.applied, second.trade_ids, second.executions) == (2, ["HOT-2", "HOT-3"], [])
    assert net_and_price() == (D("0.9"), D("12"))  # the newest trade's price
    store_trades(uow, [_trade(4)])
    third = accumulate_symbol(uow, "HOT", ACCUMULATION, NOW)
    assert (third.applied, len(third.executions)) == (1, 1)
    assert net_and_price() == (D("0.65"), D("10"))  # 1.65, less the whole share ordered
    empty = accumulate_symbol(uow, "HOT", ACCUMULATION, NOW)
    assert (empty.applied, empty.busy, empty.executions, net_and_price()) == (0, False, [], (D("0.65"), D("10")))


def test_a_restricted_symbols_trades_are_rejected_and_never_reach_a_net(uow: UnitOfWork) -> None:
    restricted = AccumulationConfig(D(1), 1000, frozenset({"AUT-USD"}))
    store_trades(uow, [_trade(1, "AUT-USD"), _trade(2, "AUT-USD")])
    result = accumulate_symbol(uow, "AUT-USD", restricted, NOW)
    assert (result.rejected, result.applied, result.executions) == (2, 0, [])
    assert result.trade_ids == ["AUT-USD-1", "AUT-USD-2"]
    with uow:
        rows = uow.session.execute(text("SELECT status, status_reason FROM trades")).all()
        accumulators = uow.session.scalar(text("SELECT count(*) FROM accumulators"))
    assert {tuple(row) for row in rows} == {("rejected", "restricted symbol: never traded")}
    assert accumulators == 0
