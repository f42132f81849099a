"""The whole path on real parts: signed webhooks -> API -> PostgreSQL -> Redis -> two Celery
workers -> paper brokerage, with re-deliveries and concurrent, out-of-order clients."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books
from tests.support.feed import make_trades, post_trades
from tests.support.fleet import wait_for

HOT = "HOT"
OTHERS = [f"SYM{n}" for n in range(1, 10)]


def test_ten_thousand_hot_trades_with_redeliveries_balance_exactly(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(20261121)
    fleet = make_fleet()
    fleet.start_api()
    fleet.start_worker()
    fleet.start_worker()
    fleet.start_beat()
    trades = make_trades(HOT, 10_000, rng) + [t for s in OTHERS for t in make_trades(s, 300, rng)]
    redelivered = rng.sample(trades, len(trades) // 5)
    deliveries = trades + redelivered
    rng.shuffle(deliveries)  # out of order, re-deliveries sometimes before the original
    batches = [deliveries[i : i + 100] for i in range(0, len(deliveries), 100)]

    def post_all(share: list[list[dict[str, str]]]) -> Counter[str]:
        totals: Counter[str] = Counter()
        with httpx.Client(base_url=fleet.api_url, timeout=60) as client:
            for batch in share:
                answer = post_trades(client, WEBHOOK_SECRET, batch)
                totals.update({"accepted": answer["accepted"], "duplicates": answer["duplicates"]})  # type: ignore[dict-item]
                assert answer["conflicts"] == []
        return totals

    with ThreadPoolExecutor(4) as clients:
        answers = sum(clients.map(post_all, [batches[i::4] for i in range(4)]), Counter())
    assert answers == {"accepted": len(trades), "duplicates": len(redelivered)}

    wait_for(books.drained, 300, "the workers to drain", interval=1)
    audit = httpx.get(f"{fleet.api_url}/audit", headers={"Authorization": f"Bearer {API_TOKEN}"}).json()
    assert audit["ok"], audit
    assert {s["symbol"] for s in audit["symbols"]} == {HOT, *OTHERS}

    # Every trade applied once, with exactly its own quantity.
    assert books.value("SELECT count(*) FROM trades WHERE status = 'accumulated'") == len(trades)
    expected = Counter[str]()
    for trade in trades:
        expected[trade["symbol"]] += Decimal(trade["quantity"]) * (1 if trade["side"] == "buy" else -1)
    for symbol in audit["symbols"]:
        assert Decimal(symbol["trades_total"]) == expected[symbol["symbol"]]
        assert Decimal(symbol["in_flight_total"]) == 0
        assert abs(Decimal(symbol["residual"])) < 1
    # Every client_order_id reached the brokerage exactly once.
    requests = books.rows("SELECT client_order_id, count(*) FROM paper_order_requests GROUP BY 1")
    executions = books.value("SELECT count(*) FROM executions")
    assert len(requests) == executions and all(count == 1 for _, count in requests)
    # The shares the brokerage filled are the shares the books say were executed.
    filled = dict(
        books.rows(
            "SELECT symbol, sum(CASE WHEN side = 'buy' THEN filled_qty ELSE -filled_qty END)"
            " FROM paper_orders GROUP BY 1"
        )
    )
    for symbol in audit["symbols"]:
        assert filled[symbol["symbol"]] == Decimal(symbol["executed_total"])
        assert filled[symbol["symbol"]] == expected[symbol["symbol"]] - Decimal(symbol["residual"])
