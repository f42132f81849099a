"""Positions, realized P&L and trade completion through the real API, workers and paper brokerage."""

from __future__ import annotations

from decimal import Decimal

import httpx

from tests.integration.conftest import OPERATOR_AUTH, WEBHOOK_SECRET, Books
from tests.support.feed import trade_json as trade
from tests.support.fleet import Fleet, wait_for
from workers.demo import post_batch

AUTH = OPERATOR_AUTH


def get(fleet: Fleet, path: str) -> httpx.Response:
    return httpx.get(f"{fleet.api_url}{path}", headers=AUTH, timeout=30)


def test_partial_exit_source_case_closes_the_remainder_and_pnl_totals_minus_252(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(DUSTPAN_DUST__MIN_POSITION_VALUE="50")
    fleet.start_api()
    fleet.start_worker()
    with httpx.Client(base_url=fleet.api_url) as client:
        post_batch(client, WEBHOOK_SECRET, [trade("buy-100", "EXITCO", "100", "26.52")])
        held = "SELECT quantity FROM positions WHERE symbol = 'EXITCO'"
        wait_for(lambda: books.rows(held) == [(Decimal(100),)], 60, "the hedge buy of 100 to fill")
        # The paper market trades at the last trade's price: half a share at 24.00 moves it there.
        post_batch(client, WEBHOOK_SECRET, [trade("tick-24", "EXITCO", "0.5", "24.00")])
    wait_for(lambda: books.value("SELECT count(*) FROM trades WHERE status = 'received'") == 0, 60, "the tick")

    answer = httpx.post(
        f"{fleet.api_url}/exits", json={"symbol": "EXITCO", "quantity": "98", "reason": "exit"}, headers=AUTH
    )
    assert answer.status_code == 202, answer.text
    wait_for(lambda: books.rows(held) == [(Decimal(0),)], 60, "the exit and the dust cleanup to fill")

    pnl = get(fleet, "/pnl?symbol=EXITCO").json()
    assert pnl["totals"] == [
        {"symbol": "EXITCO", "reason": "dust_cleanup", "pnl": "-5.04"},
        {"symbol": "EXITCO", "reason": "exit", "pnl": "-246.96"},
    ]
    assert pnl["total"] == "-252.00"
    assert [(e["reason"], e["quantity"], e["price"]) for e in pnl["entries"]] == [
        ("exit", "98", "24"),
        ("dust_cleanup", "2", "24"),
    ]
    assert [p["symbol"] for p in get(fleet, "/positions").json()["items"]] == []
    bought = get(fleet, "/trades/buy-100").json()
    assert bought["status"] == "completed"
    assert get(fleet, "/trades/tick-24").json()["status"] == "accumulated"  # half a share still waits


def test_positions_show_average_cost_value_and_unrealized_pnl(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet()
    fleet.start_api()
    fleet.start_worker()
    with httpx.Client(base_url=fleet.api_url) as client:
        post_batch(client, WEBHOOK_SECRET, [trade("p-1", "POSCO", "2", "10.00"), trade("p-2", "POSCO", "2", "12.00")])
    wait_for(lambda: books.rows("SELECT quantity FROM positions") == [(Decimal(4),)], 60, "the hedge to fill")
    [position] = get(fleet, "/positions").json()["items"]
    # One execution of 4 filled at the paper price, the last trade's 12.00.
    assert {k: position[k] for k in ("symbol", "quantity", "average_cost", "last_price", "value")} == {
        "symbol": "POSCO",
        "quantity": "4",
        "average_cost": "12",
        "last_price": "12",
        "value": "48.00",
    }
    assert position["unrealized_pnl"] == "0.00"
    assert get(fleet, "/pnl").json() == {"entries": [], "totals": [], "total": "0.00"}
    assert get(fleet, "/pnl?since=2026-01-01T00:00:00").status_code == 422  # no offset: ambiguous
    # Any offset is read and normalized to UTC; a time outside 1970..9999 after that is refused.
    assert get(fleet, "/pnl?since=6628-01-24T00:18:16.331018%2B23:12").status_code == 200
    assert get(fleet, "/pnl?since=0957-08-21T18:21:27-17:29").status_code == 422
    assert get(fleet, "/pnl?since=2026-01-01T00:00:00Z").json()["total"] == "0.00"
