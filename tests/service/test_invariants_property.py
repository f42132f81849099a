"""Property: any sequence of webhooks keeps every SPEC section 5 invariant, on real PostgreSQL.

Sequences mix several symbols, both sides, 18-decimal quantities, re-deliveries and
conflicting re-uses of ids, interleaved with accumulation runs and broker answers that
fill, partially fill or reject.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Contribution, Execution, Trade
from tasks.audit import audit_books
from tasks.execution import ExecutionConfig, submit_execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tests.conftest import truncate_all
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
SYMBOLS = ["AAA", "BBB", "CCC"]
ACCUMULATION = AccumulationConfig(D(1), 7, frozenset())  # small batches: many transactions
EXECUTION = ExecutionConfig(D(1), rejection_backoff_seconds=0, freeze_after_rejections=1000)

trades = st.builds(
    IncomingTrade,
    id=st.integers(0, 60).map(lambda n: f"trade-{n}"),  # a small id space: duplicates and conflicts
    symbol=st.sampled_from(SYMBOLS),
    side=st.sampled_from(Side),
    quantity=st.integers(1, 25 * 10**17).map(lambda units: D(units).scaleb(-18)),
    price=st.sampled_from([D("10.5"), D("99.999999")]),
    executed_at=st.just(NOW),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("webhook"), st.lists(trades, min_size=1, max_size=12)),
        st.tuples(st.just("accumulate"), st.sampled_from(SYMBOLS)),
        st.tuples(st.just("broker"), st.sampled_from(["fill", "half", "reject"])),
    ),
    min_size=1,
    max_size=25,
)


def _settle_pending(uow: UnitOfWork, broker: FakeBrokerage) -> None:
    with uow:
        pending = uow.session.scalars(select(Execution.id).where(Execution.status == "pending")).all()
    for execution_id in pending:
        submit_execution(uow, broker.by_account, execution_id, EXECUTION, NOW)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps)
def test_any_webhook_sequence_keeps_the_books_exact(database_url: str, sequence: list[tuple[str, object]]) -> None:
    truncate_all(database_url)
    uow = UnitOfWork(database_url)
    broker = FakeBrokerage()
    first_seen: dict[str, IncomingTrade] = {}
    for kind, argument in sequence:
        if kind == "webhook":
            batch: list[IncomingTrade] = argument  # type: ignore[assignment]
            result = store_trades(uow, batch)
            expected_conflicts = [
                t.id for t in batch if t.id in first_seen and first_seen[t.id].content_hash() != t.content_hash()
            ]
            for trade in batch:
                first_seen.setdefault(trade.id, trade)
            # within one request the first occurrence of an id is the one stored
            assert set(result.conflicts) >= set(expected_conflicts)
        elif kind == "accumulate":
            accumulate_symbol(uow, str(argument), ACCUMULATION, NOW)
        else:
            broker.fill_ratio = {"fill": D(1), "half": D("0.5"), "reject": D(0)}[str(argument)]
            _settle_pending(uow, broker)
        # At every commit: exact sums, open portions = residual, and no quiet symbol at/over the threshold.
        step_report = audit_books(uow, D(1), NOW)
        assert step_report.ok, [s.problems for s in step_report.symbols]
    # Drain: apply every waiting trade and let the broker fill everything.
    broker.fill_ratio = D(1)
    for _ in range(50):
        for symbol in SYMBOLS:
            while accumulate_symbol(uow, symbol, ACCUMULATION, NOW).more_waiting:
                pass
        _settle_pending(uow, broker)
        with uow:
            if not uow.session.scalar(select(func.count()).where(Execution.status == "pending")):
                break

    report = audit_books(uow, D(1), NOW)
    assert report.ok, [s.problems for s in report.symbols]
    with uow:
        stored = {t.id: t for t in uow.session.scalars(select(Trade))}
        taken = Counter[str]()
        for trade_id, quantity in uow.session.execute(select(Contribution.trade_id, Contribution.quantity)):
            if trade_id:
                taken[trade_id] += quantity
    # Each trade id stored once with the first content; each applied exactly once.
    assert set(stored) == set(first_seen)
    for trade_id, trade in stored.items():
        assert trade.content_hash == first_seen[trade_id].content_hash()
        assert trade.status == "accumulated"
        signed = trade.quantity if trade.side == "buy" else -trade.quantity
        assert taken[trade_id] + trade.open_quantity == signed
    assert all(count == 1 for count in broker.posts.values())
