"""Signed webhook posting for tests and benchmarks."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx

from workers.webhook import sign


def make_trades(symbol: str, count: int, rng: random.Random, prefix: str | None = None) -> list[dict[str, str]]:
    start = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)
    return [
        {
            "id": f"{prefix or symbol}-{n}",
            "symbol": symbol,
            "side": rng.choice(["buy", "buy", "sell"]),
            "quantity": str(Decimal(rng.randrange(1, 15 * 10**17)).scaleb(-18)),
            "price": "123.45",
            "executed_at": (start + timedelta(microseconds=n)).isoformat(),
        }
        for n in range(count)
    ]


def post_trades(client: httpx.Client, secret: str, trades: list[dict[str, str]]) -> dict[str, object]:
    body = json.dumps({"trades": trades}).encode()
    timestamp = str(int(time.time()))
    response = client.post(
        "/webhooks/trades",
        content=body,
        headers={"X-Dustpan-Timestamp": timestamp, "X-Dustpan-Signature": sign(secret, timestamp, body)},
    )
    assert response.status_code == 202, response.text
    return dict(response.json())
