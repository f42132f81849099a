"""Fixtures of the Alpaca adapter tests: a local Alpaca stub over real HTTP and an adapter on it."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

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
