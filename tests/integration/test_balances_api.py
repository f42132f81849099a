"""GET /balances through the real API, and a fresh fleet's first buy gated on a balance it fetches itself."""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal

import httpx
import psycopg2

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books
from tests.support.feed import make_trades, post_trades
from tests.support.fleet import Fleet, wait_for

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def test_a_fresh_fleet_buys_on_the_balance_it_fetched_and_reports_unknown_never_zero(
    make_fleet: Callable[..., Fleet], books: Books, clean_database: str
) -> None:
    fleet = make_fleet(DUSTPAN_ACCOUNTS="default,spare")
    fleet.start_api()
    assert httpx.get(f"{fleet.api_url}/balances").status_code == 401
    before = httpx.get(f"{fleet.api_url}/balances", headers=AUTH).json()
    assert [i["cash"] for i in before["items"]] == ["unknown", "unknown"]
    assert [i["age_seconds"] for i in before["items"]] == [None, None]

    fleet.start_worker()
    trades = [
        {**t, "side": "buy", "quantity": "1.5", "price": "20.00"} for t in make_trades("GATED", 2, random.Random(1))
    ]
    with httpx.Client(base_url=fleet.api_url) as client:
        post_trades(client, WEBHOOK_SECRET, trades)
    filled = "SELECT count(*) FROM executions WHERE symbol = 'GATED' AND status = 'filled'"
    wait_for(lambda: books.value(filled) == 1, 60, "the first buy to fill")

    with psycopg2.connect(clean_database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO balances (account, cash, buying_power, equity, fetched_at)"
            " VALUES ('spare', 5, 5, 5, now() - interval '1 hour')"
        )
    body = httpx.get(f"{fleet.api_url}/balances", headers=AUTH).json()
    assert body["max_age_seconds"] == 300
    default, spare = body["items"]
    # The gate fetched the paper account's balance before the buy (100000.00 at the start).
    assert (default["account"], default["known"], default["cash"]) == ("default", True, "100000.00")
    assert Decimal(default["age_seconds"]) < 60
    assert (spare["cash"], spare["buying_power"], spare["equity"], spare["known"]) == (
        "unknown",
        "unknown",
        "unknown",
        False,
    )
    assert spare["age_seconds"] >= 3600
