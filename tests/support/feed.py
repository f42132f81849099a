"""Signed webhook posting for tests and benchmarks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from workers.demo import post_batch


def make_trades(symbol: str, count: int, rng: random.Random, prefix: str | None = None) -> list[dict[str, str]]:
    start = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)
    return [
        {
            "id": f"{prefix or symbol}-{n}",
            "symbol": symbol,
            "side": rng.choice(["buy", "buy", "sell"]),
            "quantity": format(Decimal(rng.randrange(1, 15 * 10**17)).scaleb(-18), "f"),  # plain, as SPEC 3 reads it
            "price": "123.45",
            "executed_at": (start + timedelta(microseconds=n)).isoformat(),
        }
        for n in range(count)
    ]


def trade_json(trade_id: str, symbol: str, quantity: str, price: str, side: str = "buy") -> dict[str, str]:
    """One trade of a webhook body, as an upstream sends it."""
    return {
        "id": trade_id,
        "symbol": symbol,
        "side": side,
        "quantity": quantity,
        "price": price,
        "executed_at": "2026-11-02T14:30:00Z",
    }


# The demo's signed post is the one way to send a webhook; tests use it as it is.
post_trades = post_batch
