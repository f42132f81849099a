"""store_webhooks: a group of webhooks in one transaction, each answered as if stored alone, in order."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, OperationalError

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Trade
from tasks.ingestion import StoreResult, store_trades, store_webhooks
from tests.conftest import truncate_all

D = Decimal
NOW = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)


def trade(trade_id: str, quantity: str = "0.5", symbol: str = "AAPL") -> IncomingTrade:
    return IncomingTrade(trade_id, symbol, Side.BUY, D(quantity), D("100"), NOW)


def test_each_webhook_of_a_group_gets_the_counts_it_would_have_had_alone(clean_database: str) -> None:
    store_trades(UnitOfWork(clean_database), [trade("old")])
    group = [
        [trade("t1"), trade("old")],  # new, and a re-delivery of a stored trade
        [trade("t1")],  # the same trade again, in the same group: a duplicate
        [trade("t1", "0.75"), trade("old", "2")],  # known ids with other content: conflicts
        [trade("t2", symbol="MSFT"), trade("t2", symbol="MSFT")],  # repeated inside one webhook
    ]

    results = store_webhooks(UnitOfWork(clean_database, autocommit=True), group)

    assert results == [
        StoreResult(1, 1, [], ["AAPL"]),
        StoreResult(0, 1, [], []),
        StoreResult(0, 0, ["t1", "old"], []),
        StoreResult(1, 1, [], ["MSFT"]),
    ]
    with UnitOfWork(clean_database) as uow:
        stored = {row.id: row.quantity for row in uow.session.execute(select(Trade.id, Trade.quantity))}
    assert stored == {"old": D("0.5"), "t1": D("0.5"), "t2": D("0.5")}


trades = st.builds(
    trade,
    trade_id=st.integers(0, 12).map(lambda n: f"t{n}"),  # a small id space: repeats and conflicts
    quantity=st.sampled_from(["0.5", "0.500", "1.25", "0.000000000000000001"]),
    symbol=st.sampled_from(["AAPL", "MSFT"]),
)
webhooks = st.lists(st.lists(trades, min_size=1, max_size=5), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(earlier=webhooks, group=webhooks)
def test_a_group_answers_and_stores_exactly_as_its_webhooks_one_after_another(
    database_url: str, earlier: list[list[IncomingTrade]], group: list[list[IncomingTrade]]
) -> None:
    outcomes = []
    for store_group in (True, False):
        truncate_all(database_url)
        for webhook in earlier:
            store_trades(UnitOfWork(database_url), webhook)
        if store_group:
            results = store_webhooks(UnitOfWork(database_url, autocommit=True), group)
        else:
            results = [store_trades(UnitOfWork(database_url), webhook) for webhook in group]
        with UnitOfWork(database_url) as uow:
            rows = [tuple(row) for row in uow.session.execute(select(Trade.id, Trade.content_hash).order_by(Trade.id))]
        outcomes.append((results, rows))
    assert outcomes[0] == outcomes[1]


class _OneStatementThenGone(UnitOfWork):
    """A real unit of work whose connection is lost after its first statement: the database
    going away between the INSERT's commit and anything that would follow it."""

    statements = 0

    def rows(self, statement: str, parameters: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        type(self).statements += 1
        if type(self).statements > 1:
            raise OperationalError(statement, parameters, Exception("server closed the connection unexpectedly"))
        return super().rows(statement, parameters)


def test_duplicates_and_conflicts_are_read_in_the_statement_that_inserts(clean_database: str) -> None:
    """SPEC 6: a webhook 503 means nothing of it was committed. The answer is computed from the
    one statement that commits, so no later round trip can fail after the trades are stored."""
    store_trades(UnitOfWork(clean_database), [trade("old"), trade("older", "2")])
    _OneStatementThenGone.statements = 0

    result = store_trades(
        _OneStatementThenGone(clean_database, autocommit=True), [trade("new"), trade("old"), trade("older", "3")]
    )

    assert result == StoreResult(1, 1, ["older"], ["AAPL"])
    assert _OneStatementThenGone.statements == 1


def test_a_statement_that_fails_stores_nothing(clean_database: str) -> None:
    """The webhook's 503 path: the one statement fails (here, a value PostgreSQL rejects in the
    last row), and none of the batch's other trades are stored."""
    too_big = IncomingTrade("t3", "AAPL", Side.BUY, D("1e40"), D("100"), NOW)  # past numeric(38, 18)

    with pytest.raises(DBAPIError):
        store_webhooks(UnitOfWork(clean_database, autocommit=True), [[trade("t1"), trade("t2")], [too_big]])

    with UnitOfWork(clean_database) as uow:
        assert uow.session.scalar(select(func.count()).select_from(Trade)) == 0


def test_the_largest_quantities_sum_past_the_column_type_without_failing(clean_database: str) -> None:
    """Each trade fits numeric(38, 18); their sum in the books' totals does not have to (the
    fuzz found a webhook of two such trades answered 500)."""
    largest = "99999999999999999999.999999999999999999"
    result = store_trades(UnitOfWork(clean_database, autocommit=True), [trade("big1", largest), trade("big2", largest)])

    assert result == StoreResult(2, 0, [], ["AAPL"])
