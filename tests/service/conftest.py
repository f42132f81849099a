"""Fixtures of the Alpaca adapter tests: a local Alpaca stub over real HTTP and an adapter on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import update

from models.db import UnitOfWork
from models.tables import Execution
from tests.support.alpaca_stub import AlpacaStub
from workers.brokerage.alpaca import AlpacaBrokerage

ALPACA_TIMEOUT = Decimal("0.5")  # short: the timeout tests wait this long


@pytest.fixture
def stub() -> Iterator[AlpacaStub]:
    with AlpacaStub() as running:
        yield running


@pytest.fixture
def broker(stub: AlpacaStub) -> Iterator[AlpacaBrokerage]:
    with AlpacaBrokerage(stub.url, stub.key_id, stub.secret_key, ALPACA_TIMEOUT) as adapter:
        yield adapter


def claimed_before(uow: UnitOfWork, execution_id: uuid.UUID) -> None:
    """As if a worker had claimed the execution once and died: its next claim is not the first,
    so it looks the order up before anything is sent (tasks.execution)."""
    with uow:
        uow.session.execute(update(Execution).where(Execution.id == execution_id).values(claims=1))
        uow.commit()
