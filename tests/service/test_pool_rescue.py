"""The calls an execution node that died was making: found from the rows (lapsed claims)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select, update

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.sweeps import find_orphaned_executions

D = Decimal
DIED = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
NOW = DIED + timedelta(seconds=2)


def execution(uow: UnitOfWork, symbol: str, updated_at: datetime, claimed_until: datetime | None) -> uuid.UUID:
    store_trades(uow, [IncomingTrade(f"t-{symbol}", symbol, Side.BUY, D(1), D(100), DIED)])
    [execution_id] = accumulate_symbol(uow, symbol, AccumulationConfig(D(1), 100, frozenset()), DIED).executions
    with uow:
        uow.session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(
                updated_at=updated_at,
                claimed_until=claimed_until,
                claimed_by=None if claimed_until is None else "io-w1:42 abc",
            )
        )
        uow.commit()
    return execution_id


def test_executions_whose_claims_lapsed_are_the_orphans(uow: UnitOfWork) -> None:
    lapsed = execution(uow, "LAPSED", DIED - timedelta(seconds=5), NOW - timedelta(seconds=1))
    execution(uow, "LIVE", DIED - timedelta(seconds=5), NOW + timedelta(seconds=1))  # still calling
    # Queued, claimed by nobody: maybe in the dead node's prefetch, maybe behind a backlog. The
    # sweep re-sends it once it is pending_stale_seconds old; a lapsed claim alone does not say.
    queued = execution(uow, "QUEUED", DIED - timedelta(seconds=1), None)
    execution(uow, "LATER", DIED + timedelta(seconds=1), None)  # created after the death: not the dead node's

    assert find_orphaned_executions(uow, NOW) == [lapsed]
    # Told when a node died: what nobody claimed since before then may have been in its hands.
    assert find_orphaned_executions(uow, NOW, died_at=DIED) == [lapsed, queued]


def test_a_death_re_sends_at_most_the_symbols_call_slots_of_each_symbol(uow: UnitOfWork) -> None:
    """A symbol whose calls hang keeps many executions waiting unclaimed: the rescue sends the
    oldest of each symbol up to its call slots (their claims wake the rest), and every lapsed claim."""
    config = AccumulationConfig(D(1), 1, frozenset())
    store_trades(uow, [IncomingTrade(f"s{n}", "SICK", Side.BUY, D(1), D(100), DIED) for n in range(5)])
    sick = [accumulate_symbol(uow, "SICK", config, DIED).executions[0] for _ in range(5)]
    with uow:
        uow.session.execute(update(Execution).values(updated_at=DIED - timedelta(seconds=5)))
        uow.commit()
    lapsed = execution(uow, "LAPSED", DIED - timedelta(seconds=9), NOW - timedelta(seconds=1))
    other = execution(uow, "OTHER", DIED - timedelta(seconds=1), None)

    found = find_orphaned_executions(uow, NOW, died_at=DIED, per_symbol=2)
    assert sorted(map(str, found)) == sorted(map(str, [lapsed, sick[0], sick[1], other]))
    assert found[0] == lapsed  # oldest first
    # The rest of the symbol wait marked, with no message: the claims of the ones sent wake them.
    with uow:
        marked = set(uow.session.scalars(select(Execution.id).where(Execution.waiting_since.is_not(None))))
    assert marked == set(sick[2:])
    assert len(find_orphaned_executions(uow, NOW, died_at=DIED)) == 7  # uncapped: every one
