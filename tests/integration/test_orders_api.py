"""Sells, quotes, exits and freezes through the real API, filled by a real worker and the paper broker."""

from __future__ import annotations

import random
from decimal import Decimal

import httpx
import pytest

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books
from tests.support.feed import make_trades, post_trades
from tests.support.fleet import Fleet, wait_for

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def fleet(make_fleet, books: Books) -> Fleet:  # type: ignore[no-untyped-def]
    fleet = make_fleet(
        DUSTPAN_DUST__MAX_DUST_PER_SALE="2",
        DUSTPAN_DUST__MIN_POSITION_VALUE="50",
        DUSTPAN_ACCUMULATION__RESTRICTED_SYMBOLS="AUT-USD",
    )
    fleet.start_api()
    fleet.start_worker()
    # Ten shares of SELLME bought at 30.00 by hedging four upstream buys of 2.5.
    trades = [
        {**t, "side": "buy", "quantity": "2.5", "price": "30.00"} for t in make_trades("SELLME", 4, random.Random(3))
    ]
    with httpx.Client(base_url=fleet.api_url) as client:
        post_trades(client, WEBHOOK_SECRET, trades)
    held = "SELECT quantity FROM positions WHERE account = 'default' AND symbol = 'SELLME'"
    wait_for(lambda: books.rows(held) == [(Decimal(10),)], 60, "the hedge to fill into a position")
    return fleet


def post(fleet: Fleet, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{fleet.api_url}{path}", json=body, headers=AUTH, timeout=30)


def test_quote_and_dust_cap_follow_the_contract(fleet: Fleet, books: Books) -> None:
    quoted = post(fleet, "/sells/quote", {"symbol": "SELLME", "notional": "100.00"})
    assert quoted.status_code == 200, quoted.text
    quote = quoted.json()
    assert {k: quote[k] for k in ("quantity", "price", "proceeds", "dust", "within_cap")} == {
        "quantity": "3",
        "price": "30.00",
        "proceeds": "90.00",
        "dust": "10.00",
        "within_cap": False,
    }
    assert (quote["nearest_below"], quote["nearest_above"]) == ("92.00", "120.00")

    refused = post(fleet, "/sells", {"symbol": "SELLME", "notional": "100.00"})
    assert refused.status_code == 422
    body = refused.json()
    assert set(body) == {"error", "cap", "would_be_dust", "message"}
    assert (body["error"], body["cap"], body["would_be_dust"]) == ("dust_cap_exceeded", "2.00", "10.00")
    assert books.value("SELECT count(*) FROM dust_ledger") == 0

    # A JSON number is read from its text: 91.00 stays 91.00, never a float.
    accepted = httpx.post(
        f"{fleet.api_url}/sells",
        content=b'{"symbol": "SELLME", "notional": 91.00}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert accepted.status_code == 202, accepted.text
    sale = accepted.json()
    assert (sale["quantity"], sale["proceeds"], sale["dust"], sale["requested"]) == ("3", "90.00", "1.00", "91.00")
    execution_id = sale["execution"]["id"]
    filled = "SELECT status FROM executions WHERE id = %s"
    wait_for(lambda: books.rows(filled, execution_id) == [("filled",)], 60, "the sale to fill")
    dust = httpx.get(f"{fleet.api_url}/dust", headers=AUTH).json()["ledger"]
    assert (dust["sales"], Decimal(dust["volume_with_dust"]), Decimal(dust["dust"])) == (1, Decimal("91.00"), 1)


def test_exit_all_then_nothing_left_to_exit(fleet: Fleet, books: Books) -> None:
    answer = post(fleet, "/exits", {"symbol": "SELLME", "all": True, "reason": "take profit"})
    assert answer.status_code == 202, answer.text
    assert (answer.json()["execution"]["quantity"], answer.json()["execution"]["source"]) == ("10", "exit")
    held = "SELECT quantity FROM positions WHERE symbol = 'SELLME'"
    wait_for(lambda: books.rows(held) == [(0,)], 60, "the exit to fill")
    again = post(fleet, "/exits", {"symbol": "SELLME", "quantity": "1", "reason": "again"})
    assert (again.status_code, again.json()["error"]) == (409, "insufficient_position")


def test_frozen_and_restricted_symbols_are_refused_by_name(fleet: Fleet) -> None:
    assert httpx.post(f"{fleet.api_url}/freezes/SELLME", headers=AUTH).status_code == 201
    frozen = post(fleet, "/sells", {"symbol": "SELLME", "notional": "60.00"})
    assert (frozen.status_code, frozen.json()["error"]) == (409, "symbol_frozen")
    listed = httpx.get(f"{fleet.api_url}/freezes", headers=AUTH).json()
    assert [(f["symbol"], f["source"]) for f in listed] == [("SELLME", "manual")]
    assert httpx.delete(f"{fleet.api_url}/freezes/SELLME", headers=AUTH).status_code == 204
    assert httpx.delete(f"{fleet.api_url}/freezes/SELLME", headers=AUTH).status_code == 404
    assert post(fleet, "/sells", {"symbol": "SELLME", "notional": "60.00"}).status_code == 202
    restricted = post(fleet, "/exits", {"symbol": "AUT-USD", "all": True, "reason": "x"})
    assert (restricted.status_code, restricted.json()["error"]) == (422, "symbol_restricted")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sells", {"symbol": "SELLME", "notional": "-1"}),
        ("/sells", {"symbol": "SELLME", "notional": "NaN"}),
        ("/sells", {"symbol": "SELLME", "notional": "1", "extra": 1}),
        ("/sells", {"symbol": "sellme", "notional": "1"}),
        ("/exits", {"symbol": "SELLME", "quantity": "1", "all": True, "reason": "both"}),
        ("/exits", {"symbol": "SELLME", "reason": "neither"}),
        ("/exits", {"symbol": "SELLME", "all": True}),
    ],
)
def test_bad_order_bodies_are_422_and_write_nothing(fleet: Fleet, books: Books, path: str, body: object) -> None:
    before = books.value("SELECT count(*) FROM executions")
    answer = post(fleet, path, body)
    assert answer.status_code == 422, answer.text
    assert books.value("SELECT count(*) FROM executions") == before
