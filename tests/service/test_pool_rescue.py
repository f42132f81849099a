"""What an execution node that died may have held: found from the rows, re-sent once per rescue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import update

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


def test_lapsed_claims_and_untouched_unclaimed_executions_are_the_dead_nodes_orphans(uow: UnitOfWork) -> None:
    lapsed = execution(uow, "LAPSED", DIED - timedelta(seconds=5), NOW - timedelta(seconds=1))
    live = execution(uow, "LIVE", DIED - timedelta(seconds=5), NOW + timedelta(seconds=1))  # still calling
    held = execution(uow, "HELD", DIED - timedelta(seconds=1), None)  # its message may have died with the node
    execution(uow, "FRESH", DIED + timedelta(seconds=1), None)  # created after the death: its message is live

    found = find_orphaned_executions(uow, NOW, DIED)

    assert sorted(found) == sorted([lapsed, held])
    assert live not in found
