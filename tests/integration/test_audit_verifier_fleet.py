"""The background verifier on real processes: Beat ticks, a worker walks the history, /audit reports."""

from __future__ import annotations

import random
from typing import Any

import httpx
import psycopg2

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books
from tests.support.feed import make_trades, post_trades
from tests.support.fleet import Fleet, wait_for

PASSES = "SELECT coalesce((SELECT passes FROM audit_verifier), 0)"


def audit(fleet: Fleet) -> dict[str, Any]:
    answer = httpx.get(f"{fleet.api_url}/audit", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30)
    return dict(answer.json())


def test_beat_verifier_finds_an_old_trade_changed_behind_the_triggers(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = make_fleet(DUSTPAN_SCHEDULE__AUDIT_VERIFY_SECONDS="1", DUSTPAN_AUDIT__VERIFY_CHUNK_ROWS="100")
    fleet.start_api()
    fleet.start_worker()
    fleet.start_beat()
    rng = random.Random(19)
    trades = make_trades("AAA", 300, rng) + make_trades("BBB", 200, rng)
    with httpx.Client(base_url=fleet.api_url, timeout=60) as client:
        for i in range(0, len(trades), 100):
            post_trades(client, WEBHOOK_SECRET, trades[i : i + 100])
    wait_for(books.drained, 120, "the workers to drain", interval=0.5)
    settled_at = books.value(PASSES)
    # A pass that started once everything had settled: its checkpoint covers every trade.
    wait_for(lambda: books.value(PASSES) >= settled_at + 2, 120, "a verifier pass over the settled books")  # type: ignore[operator]
    assert audit(fleet)["ok"], audit(fleet)
    assert books.value("SELECT min(trade_seq) FROM audit_checkpoints") >= books.value("SELECT max(seq) FROM trades")  # type: ignore[operator]

    connection = psycopg2.connect(books.url)
    with connection, connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")  # no trigger sees it
        cursor.execute("UPDATE trades SET quantity = quantity + 1 WHERE seq = (SELECT min(seq) FROM trades)")
    connection.close()
    tampered = books.value(PASSES)
    wait_for(lambda: books.value(PASSES) >= tampered + 2, 120, "the verifier's next pass")  # type: ignore[operator]
    report = audit(fleet)
    assert not report["ok"]
    unbalanced = [s for s in report["symbols"] if not s["balanced"]]
    assert [s["symbol"] for s in unbalanced] == ["AAA"]
    assert any(p.startswith("running total of applied trades") for p in unbalanced[0]["problems"]), unbalanced
