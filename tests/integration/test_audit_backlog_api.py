"""`GET /audit` sees the backlog: a trade received but never accumulated makes it fail (SPEC 3, issue 17).

No worker runs here, so a stored trade stays `received`, as when the pipeline stalls; its
received_at is then set back past `audit.max_waiting_seconds`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import psycopg2
import pytest

from tests.integration.conftest import OPERATOR_AUTH, WEBHOOK_SECRET, Books
from tests.support.feed import post_trades, trade_json
from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration


def _audit(fleet: Fleet) -> dict[str, Any]:
    response = httpx.get(f"{fleet.api_url}/audit", headers=OPERATOR_AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_audit_fails_once_an_unaccumulated_trade_is_older_than_the_setting(
    make_fleet: Callable[..., Fleet], books: Books
) -> None:
    fleet = make_fleet(DUSTPAN_AUDIT__MAX_WAITING_SECONDS="60")
    fleet.start_api()
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        post_trades(client, WEBHOOK_SECRET, [trade_json("stalled-1", "HOT", "0.57", "10.00")])

    fresh = _audit(fleet)
    assert fresh["ok"], fresh
    [hot] = [s for s in fresh["symbols"] if s["symbol"] == "HOT"]
    assert hot["waiting"] == 1 and hot["oldest_waiting_s"] is not None

    connection = psycopg2.connect(books.url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("UPDATE trades SET received_at = received_at - interval '120 seconds'")
    finally:
        connection.close()

    stalled = _audit(fleet)
    assert not stalled["ok"], stalled
    [hot] = [s for s in stalled["symbols"] if s["symbol"] == "HOT"]
    assert hot["waiting"] == 1 and float(hot["oldest_waiting_s"]) >= 120  # float-ok: seconds
