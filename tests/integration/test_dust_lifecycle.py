"""Dust and exit completeness through the real API, Celery workers and the paper brokerage:
the ledger on fills, the orphan lifecycle, exits against venue rules, re-execution lineage,
and normalization's consolidation (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from typing import Any

import httpx
import psycopg2

from tests.integration.conftest import OPERATOR_AUTH, WEBHOOK_SECRET, Books
from tests.support.feed import trade_json as trade
from tests.support.fleet import REPO, Fleet, wait_for
from workers.demo import post_batch

AUTH = OPERATOR_AUTH


def send(fleet: Fleet, *trades: dict[str, str]) -> None:
    with httpx.Client(base_url=fleet.api_url) as client:
        post_batch(client, WEBHOOK_SECRET, list(trades))


def post(fleet: Fleet, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{fleet.api_url}{path}", json=body, headers=AUTH, timeout=30)


def get(fleet: Fleet, path: str) -> Any:
    answer = httpx.get(f"{fleet.api_url}{path}", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json() if "json" in answer.headers.get("content-type", "") else answer.text


def write(books: Books, statement: str, *args: object) -> None:
    """Set the books up as an earlier failure would have left them."""
    connection = psycopg2.connect(books.url)
    with connection, connection.cursor() as cursor:
        cursor.execute(statement, args)
    connection.close()


def dustpan(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env=fleet.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def held(books: Books, symbol: str) -> Decimal | None:
    rows = books.rows("SELECT quantity FROM positions WHERE symbol = %s", symbol)
    return rows[0][0] if rows else None  # type: ignore[return-value]


def started(make_fleet, **overrides: str) -> Fleet:  # type: ignore[no-untyped-def]
    fleet: Fleet = make_fleet(**overrides)
    fleet.start_api()
    fleet.start_worker()
    return fleet


def test_rejected_notional_sale_writes_no_dust(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet = started(make_fleet, DUSTPAN_PAPER__REJECT_SYMBOLS="REJ")
    for symbol in ("REJ", "FINE"):
        write(
            books,
            "INSERT INTO positions (account, symbol, quantity, average_price) VALUES ('default', %s, 10, 30)",
            symbol,
        )
    sales = {}
    for symbol in ("REJ", "FINE"):
        answer = post(fleet, "/sells", {"symbol": symbol, "notional": "250.00"})  # 2 shares at the paper's 100
        assert answer.status_code == 202, answer.text
        sales[symbol] = answer.json()["execution"]["id"]
    status = "SELECT status FROM executions WHERE id = %s"
    wait_for(lambda: books.rows(status, sales["REJ"]) == [("rejected",)], 60, "the broker to reject the sale")
    wait_for(lambda: books.rows(status, sales["FINE"]) == [("filled",)], 60, "the other sale to fill")
    ledger = books.rows("SELECT symbol, requested_notional, proceeds, dust, unfilled_notional FROM dust_ledger")
    assert ledger == [("FINE", Decimal(250), Decimal(200), Decimal(50), Decimal(0))]
    dust = get(fleet, "/dust")["ledger"]
    assert (dust["sales"], dust["proceeds"], dust["dust"], dust["volume_with_dust"]) == (1, "200.00", "50.00", "250.00")


def test_orphan_cleared_by_next_cleanup_run(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet = started(make_fleet)
    send(fleet, trade("o-1", "ORPH", "2", "24.00"))
    wait_for(lambda: held(books, "ORPH") == 2, 60, "the hedge buy to fill")
    # As a failed dust_cleanup order leaves it: the shares still at the broker, flagged.
    write(books, "UPDATE positions SET status = 'dust_orphaned' WHERE symbol = 'ORPH'")
    assert [o["symbol"] for o in get(fleet, "/dust")["orphaned"]] == ["ORPH"]
    assert "dustpan_dust_orphaned_positions 1.0" in get(fleet, "/metrics")

    run = dustpan(fleet, "cleanup", "--json")  # a dry run still retries orphans: the exit decided them
    assert run.returncode == 0, run.stderr
    [orphan] = json.loads(run.stdout)["orphans"]
    assert (orphan["symbol"], orphan["action"], orphan["quantity"]) == ("ORPH", "retried", "2")
    wait_for(lambda: held(books, "ORPH") == 0, 60, "the retried cleanup to fill")
    assert books.rows("SELECT status FROM positions WHERE symbol = 'ORPH'") == [("open",)]
    assert get(fleet, "/dust")["orphaned"] == []
    assert [(e["reason"], e["quantity"]) for e in get(fleet, "/pnl?symbol=ORPH")["entries"]] == [("dust_cleanup", "2")]
    assert "dustpan_dust_orphaned_positions 0.0" in get(fleet, "/metrics")


def test_orphan_cleared_when_the_broker_no_longer_holds_it_or_an_exit_sells_it(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet = started(make_fleet)
    # GONE: tracked but not at the broker (sold outside dustpan). EXITED: held, then exited whole.
    write(
        books,
        "INSERT INTO positions (account, symbol, quantity, average_price, status)"
        " VALUES ('default', 'GONE', 2, 30, 'dust_orphaned')",
    )
    send(fleet, trade("x-1", "EXITED", "3", "20.00"))
    wait_for(lambda: held(books, "EXITED") == 3, 60, "the hedge buy to fill")
    write(books, "UPDATE positions SET status = 'dust_orphaned' WHERE symbol = 'EXITED'")

    answer = post(fleet, "/exits", {"symbol": "EXITED", "all": True, "reason": "manual exit"})
    assert answer.status_code == 202, answer.text
    wait_for(lambda: held(books, "EXITED") == 0, 60, "the exit to fill")
    assert [o["symbol"] for o in get(fleet, "/dust")["orphaned"]] == ["GONE"]  # never an orphan of 0 shares

    run = dustpan(fleet, "cleanup", "--json")
    assert run.returncode == 0, run.stderr
    [orphan] = json.loads(run.stdout)["orphans"]
    assert (orphan["symbol"], orphan["action"], orphan["quantity"]) == ("GONE", "cleared", "2")
    assert get(fleet, "/dust")["orphaned"] == []
    assert books.value("SELECT count(*) FROM executions WHERE symbol = 'GONE'") == 0  # nothing sold


def test_exit_below_the_venue_minimum_is_422_and_keeps_the_aggregate_in_step(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet = started(make_fleet, DUSTPAN_VENUES__RULES=json.dumps({"DUSTY": {"min_quantity": "5"}}))
    send(fleet, trade("d-1", "DUSTY", "2", "10.00"))
    wait_for(lambda: held(books, "DUSTY") == 2, 60, "the hedge buy to fill")
    for command in (("sync",), ("scan", "--execute")):
        assert dustpan(fleet, *command).returncode == 0
    dust = get(fleet, "/dust")["lots"]
    [aggregate] = dust["dust_pending"]
    [lot] = dust["dust_aggregated"]  # the broker lot, visible with the aggregate it joined
    assert (aggregate["quantity"], lot["aggregate_id"]) == ("2", aggregate["id"])

    refused = post(fleet, "/exits", {"symbol": "DUSTY", "all": True, "reason": "sell the dust"})
    assert refused.status_code == 422, refused.text
    assert (refused.json()["error"], refused.json()["min_quantity"]) == ("not_tradable", "5")
    assert "minimum 5" in refused.json()["message"]
    assert books.value("SELECT count(*) FROM executions WHERE source = 'exit'") == 0
    sale = post(fleet, "/sells", {"symbol": "DUSTY", "notional": "20.00"})
    assert (sale.status_code, sale.json()["error"]) == (422, "not_tradable")  # the same rule, the same answer

    send(fleet, trade("d-2", "DUSTY", "4", "10.00"))
    wait_for(lambda: held(books, "DUSTY") == 6, 60, "the second buy to fill")
    assert post(fleet, "/exits", {"symbol": "DUSTY", "all": True, "reason": "out"}).status_code == 202
    wait_for(lambda: held(books, "DUSTY") == 0, 60, "the exit of all 6 to fill")
    assert books.rows("SELECT status FROM lots WHERE id = %s", aggregate["id"]) == [("sold",)]
    assert "dust_pending" not in get(fleet, "/dust")["lots"]


def test_reexecution_after_a_rejection_keeps_the_trade_ids(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(
        DUSTPAN_PAPER__REJECT_SYMBOLS="REEX",
        DUSTPAN_EXECUTION__REJECTION_BACKOFF_SECONDS="1",
        DUSTPAN_EXECUTION__FREEZE_AFTER_REJECTIONS="10",
    )
    fleet.start_api()
    worker = fleet.start_worker()
    send(fleet, trade("r-1", "REEX", "0.75", "50.00"), trade("r-2", "REEX", "1.5", "50.00"))
    rejected = "SELECT id FROM executions WHERE symbol = 'REEX' AND status = 'rejected'"
    wait_for(lambda: len(books.rows(rejected)) >= 1, 60, "the broker to reject the first execution")
    worker.stop()
    fleet.env["DUSTPAN_PAPER__REJECT_SYMBOLS"] = ""  # the venue accepts the symbol again
    worker.start()
    fleet.start_beat()  # the sweep re-executes the returned shares once the backoff is over
    filled = "SELECT id FROM executions WHERE symbol = 'REEX' AND status = 'filled'"
    wait_for(lambda: len(books.rows(filled)) == 1, 90, "the re-execution to fill")

    executions = get(fleet, "/executions?symbol=REEX")["items"]
    [done] = [e for e in executions if e["status"] == "filled"]
    assert (done["quantity"], done["trade_ids"]) == ("2", ["r-1", "r-2"])
    assert all(e["trade_ids"] == ["r-1", "r-2"] for e in executions)
    first = get(fleet, "/trades/r-1")
    assert first["status"] == "completed"
    assert [e["status"] for e in first["executions"]][-1] == "filled"
    assert len(first["executions"]) == len(executions)
    second = get(fleet, "/trades/r-2")
    assert second["status"] == "accumulated"  # 0.25 of it still waits in the net
    assert second["executions"][-1]["filled_quantity"] == "1.25"


def test_normalization_consolidates_an_unsellable_position_up_to_a_sellable_quantity(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet = started(make_fleet, DUSTPAN_VENUES__RULES=json.dumps({"CONS": {"min_quantity": "3"}}))
    send(fleet, trade("c-1", "CONS", "2", "4.00"))  # worth 8.00: above 7.50, below 10.00, unsellable
    wait_for(lambda: held(books, "CONS") == 2, 60, "the hedge buy to fill")
    dry = dustpan(fleet, "normalize", "--json")
    assert dry.returncode == 0, dry.stderr
    [line] = json.loads(dry.stdout)["lines"]
    assert (line["symbol"], line["action"], line["value"]) == ("CONS", "would_consolidate", "8")
    assert books.value("SELECT count(*) FROM executions WHERE source = 'consolidate'") == 0

    done = dustpan(fleet, "normalize", "--execute", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["consolidated"], summary["lines"][0]["reason"].split(" for ")[0]) == (1, "buy 3")
    wait_for(lambda: held(books, "CONS") == 5, 60, "the consolidation buy to fill")
    again = json.loads(dustpan(fleet, "normalize", "--execute", "--json").stdout)
    assert again["lines"] == []  # worth 20.00 now: nothing left to consolidate
