"""`GET /metrics` against a real API and worker: fleet counters from Redis, gauges from the books."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books, alpaca_fleet_env
from tests.support.alpaca_stub import AlpacaStub
from tests.support.feed import post_trades
from tests.support.fleet import Fleet, free_port, wait_for
from workers import metrics
from workers.metric_batch import IncrementBatch
from workers.webhook import sign

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]  # float-ok: parsed Prometheus samples


def trade(trade_id: str, symbol: str, side: str, quantity: str) -> dict[str, str]:
    return {
        "id": trade_id,
        "symbol": symbol,
        "side": side,
        "quantity": quantity,
        "price": "231.40",
        "executed_at": "2026-11-02T14:30:00.000001+00:00",
    }


def scrape(client: httpx.Client) -> Samples:
    assert client.get("/metrics").status_code == 401  # an operator endpoint: the token is required
    response = client.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:  # float-ok: a parsed sample
    return samples.get((name, frozenset(labels.items())), 0)


def post_refused_requests(client: httpx.Client) -> None:
    bad = json.dumps({"trades": [trade("m-9", "AAPL", "buy", "1")]}).encode()
    stamp = str(int(time.time()))
    unsigned = {"X-Dustpan-Timestamp": stamp, "X-Dustpan-Signature": sign("not-the-secret", stamp, bad)}
    assert client.post("/webhooks/trades", content=bad, headers=unsigned).status_code == 401
    invalid = json.dumps({"trades": [trade("m-8", "AAPL", "hold", "1")]}).encode()
    signed = {"X-Dustpan-Timestamp": stamp, "X-Dustpan-Signature": sign(WEBHOOK_SECRET, stamp, invalid)}
    assert client.post("/webhooks/trades", content=invalid, headers=signed).status_code == 422
    assert client.post("/webhooks/trades", content=b"x" * 2048, headers=signed).status_code == 413


def send_task_that_fails(broker_url: str) -> None:
    """A real failure: execution.submit cannot parse a non-UUID id and raises ValueError."""
    sender = Celery("metrics-test", broker=broker_url)
    try:
        sender.send_task("execution.submit", args=["not-a-uuid"], queue="execution", routing_key="execution")
    finally:
        sender.close()


def test_metrics_count_webhook_outcomes_task_retries_and_read_the_books(
    make_fleet: Callable[..., Fleet], books: Books, broker_url: str
) -> None:
    # Every order request fails with a 5xx: execution.submit retries and the execution stays pending.
    fleet = make_fleet(DUSTPAN_PAPER__FAIL_RATE="1", DUSTPAN_WEBHOOK__MAX_BODY_BYTES="1024")
    fleet.start_api()
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        first = [
            trade("m-1", "AAPL", "buy", "1.25"),
            trade("m-2", "AAPL", "buy", "0.5"),
            trade("m-3", "MSFT", "sell", "0.3"),
        ]
        assert post_trades(client, WEBHOOK_SECRET, first) == {"accepted": 3, "duplicates": 0, "conflicts": []}
        again = [first[0], trade("m-2", "AAPL", "buy", "0.75"), trade("m-4", "AAPL", "buy", "0.125")]
        assert post_trades(client, WEBHOOK_SECRET, again) == {"accepted": 1, "duplicates": 1, "conflicts": ["m-2"]}
        post_refused_requests(client)

        # All trades are stored before the worker starts: AAPL nets 1.875 in one run, one BUY 1.
        fleet.start_worker()
        send_task_that_fails(broker_url)
        wait_for(
            lambda: (
                books.value("SELECT count(*) FROM trades WHERE status = 'received'") == 0
                and books.value("SELECT count(*) FROM executions") == 1
            ),
            60,
            "the trades to be accumulated into one execution",
        )
        wait_for(
            lambda: (
                value(scrape(client), "dustpan_task_retries_total", task="execution.submit") > 0
                and value(scrape(client), "dustpan_task_failures_total", task="execution.submit") == 1
            ),
            60,
            "execution.submit to retry and the bad task to fail",
        )
        samples = scrape(client)

    assert value(samples, "dustpan_webhook_trades_total", outcome="accepted") == 4
    assert value(samples, "dustpan_webhook_trades_total", outcome="duplicate") == 1
    assert value(samples, "dustpan_webhook_trades_total", outcome="conflict") == 1
    for status, count in {"202": 2, "401": 1, "413": 1, "422": 1}.items():
        assert value(samples, "dustpan_webhook_responses_total", status=status) == count, status
    assert value(samples, "dustpan_webhook_duration_seconds_count") == 5
    assert value(samples, "dustpan_webhook_duration_seconds_bucket", le="+Inf") == 5
    assert value(samples, "dustpan_webhook_duration_seconds_sum") > 0

    assert value(samples, "dustpan_accumulator_net_quantity", symbol="AAPL") == float(Decimal("0.875"))  # float-ok
    assert value(samples, "dustpan_accumulator_net_quantity", symbol="MSFT") == float(Decimal("-0.3"))  # float-ok
    assert value(samples, "dustpan_executions", status="pending", source="hedge") == 1
    others = [k for k, v in samples.items() if k[0] == "dustpan_executions" and v and ("status", "pending") not in k[1]]
    assert others == []
    assert value(samples, "dustpan_audit_unbalanced_symbols") == 0
    assert value(samples, "dustpan_task_failures_total", task="ingestion.accumulate") == 0
    assert value(samples, "dustpan_metrics_source_up", source="redis") == 1
    assert value(samples, "dustpan_metrics_source_up", source="database") == 1


def test_metric_writes_to_an_unreachable_redis_log_and_do_not_raise() -> None:
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)  # float-ok: seconds
    metrics.record_webhook(202, None, 1_000_000, client=nowhere)
    metrics.count_task_success(sender=None, client=nowhere)
    metrics.count_task_failure(sender=None, client=nowhere)
    metrics.count_task_retry(sender=None, client=nowhere)


def test_task_metrics_are_added_up_in_the_process_and_written_together(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    batch = IncrementBatch(lambda: client, every_seconds=3600)  # no timed write: flush() decides
    for _ in range(3):
        batch.add("dustpan:test:counts", {"a": 1})
    batch.add("dustpan:test:counts", {"b": 2})
    batch.add("dustpan:test:other", {"a": 5})
    assert client.hgetall("dustpan:test:counts") == {}  # nothing written on the task's path
    batch.flush()
    assert client.hgetall("dustpan:test:counts") == {b"a": b"3", b"b": b"2"}
    assert client.hgetall("dustpan:test:other") == {b"a": b"5"}
    batch.flush()  # written once
    assert client.hgetall("dustpan:test:counts") == {b"a": b"3", b"b": b"2"}

    timed = IncrementBatch(lambda: client, every_seconds=0.05)  # float-ok: seconds
    timed.add("dustpan:test:timed", {"a": 1})
    wait_for(lambda: client.hget("dustpan:test:timed", "a") == b"1", 10, "the batch's thread to write")


def test_task_metrics_for_an_unreachable_redis_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)  # float-ok: seconds
    batch = IncrementBatch(lambda: nowhere, every_seconds=3600)
    batch.add("dustpan:test:counts", {"a": 1})
    batch.flush()
    assert "metrics not recorded (dustpan:test:counts)" in caplog.text


def test_queue_depth_and_accumulator_lag_grow_without_workers_and_drain_to_zero(
    make_fleet: Callable[..., Fleet], books: Books
) -> None:
    fleet = make_fleet()
    fleet.start_api()
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        trades = [
            trade("q-1", "AAPL", "buy", "0.5"),
            trade("q-2", "MSFT", "buy", "0.25"),
            trade("q-3", "AAPL", "sell", "0.1"),
        ]
        post_trades(client, WEBHOOK_SECRET, trades)
        time.sleep(1.5)  # the oldest waiting trade is now over a second old
        waiting = scrape(client)
        # No worker runs: one wake-up message per symbol waits in the ingestion list.
        assert value(waiting, "dustpan_queue_depth", queue="ingestion") == 2
        assert value(waiting, "dustpan_queue_depth", queue="execution") == 0
        assert value(waiting, "dustpan_queue_depth", queue="ops") == 0
        assert value(waiting, "dustpan_accumulator_waiting_trades") == 3
        assert 1 <= value(waiting, "dustpan_accumulator_lag_seconds") < 60

        fleet.start_worker()

        def drained() -> bool:
            samples = scrape(client)
            return (
                # The two wake-ups, and any run the worker's own sweep adds (harmless: nothing waits).
                value(samples, "dustpan_task_successes_total", task="ingestion.accumulate") >= 2
                and value(samples, "dustpan_accumulator_waiting_trades") == 0
            )

        wait_for(drained, 60, "the worker to accumulate both symbols")
        samples = scrape(client)

    for queue in ("ingestion", "execution", "ops"):
        assert value(samples, "dustpan_queue_depth", queue=queue) == 0, queue
    assert value(samples, "dustpan_accumulator_lag_seconds") == 0
    assert value(samples, "dustpan_task_failures_total", task="ingestion.accumulate") == 0
    assert books.drained()


def test_queue_depth_counts_every_priority_list_of_a_queue(make_fleet: Callable[..., Fleet], broker_url: str) -> None:
    sender = Celery("metrics-priority-test", broker=broker_url)
    try:
        for priority in (None, 5, 9):
            options = {} if priority is None else {"priority": priority}
            sender.send_task("sweep.rewake", queue="ops", routing_key="ops", **options)
    finally:
        sender.close()
    fleet = make_fleet()
    fleet.start_api()
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        assert value(scrape(client), "dustpan_queue_depth", queue="ops") == 3


def histogram(samples: Samples, name: str) -> tuple[float, float, float]:  # float-ok: parsed samples
    """(count, +Inf bucket, sum) of a histogram."""
    return (
        value(samples, f"{name}_count"),
        value(samples, f"{name}_bucket", le="+Inf"),
        value(samples, f"{name}_sum"),
    )


def at(stamp: str | None) -> datetime:
    assert stamp is not None
    return datetime.fromisoformat(stamp)


def test_trade_latency_histograms_observe_every_trade_and_order_and_trades_show_their_stamps(
    make_fleet: Callable[..., Fleet], books: Books
) -> None:
    fleet = make_fleet()
    fleet.start_api()
    fleet.start_worker()
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        before = scrape(client)
        assert histogram(before, "dustpan_trade_received_to_accumulated_seconds") == (0, 0, 0)
        assert histogram(before, "dustpan_trade_received_to_submitted_seconds") == (0, 0, 0)
        first = [trade("l-1", "AAPL", "buy", "0.75"), trade("l-2", "MSFT", "sell", "0.25")]
        post_trades(client, WEBHOOK_SECRET, first)
        # l-1 and l-3 make one whole AAPL share; MSFT stays below a share.
        post_trades(client, WEBHOOK_SECRET, [trade("l-3", "AAPL", "buy", "0.5")])
        filled = "SELECT count(*) FROM executions WHERE status = 'filled'"
        wait_for(lambda: books.value(filled) == 1 and books.drained(), 60, "the AAPL share to fill")

        def observed() -> bool:
            samples = scrape(client)
            return (
                histogram(samples, "dustpan_trade_received_to_accumulated_seconds")[0] == 3
                and histogram(samples, "dustpan_trade_received_to_submitted_seconds")[0] == 1
            )

        wait_for(observed, 30, "three trades and one order in the histograms")  # observed after the commit
        samples = scrape(client)
        trade_view = client.get("/trades/l-1", headers={"Authorization": f"Bearer {API_TOKEN}"}).json()

    accumulated = histogram(samples, "dustpan_trade_received_to_accumulated_seconds")
    submitted = histogram(samples, "dustpan_trade_received_to_submitted_seconds")
    assert accumulated[1] == 3 and accumulated[2] >= 0
    assert submitted[1] == 1 and submitted[2] > 0
    # GET /trades/{id}: the stamps the histograms measure between, in the order they happened.
    assert trade_view["status"] == "completed"
    [execution] = trade_view["executions"]
    received, accumulated_at = at(trade_view["received_at"]), at(trade_view["accumulated_at"])
    created, sent, done = (at(execution[f]) for f in ("created_at", "submitted_at", "filled_at"))
    assert received <= accumulated_at <= created <= sent <= done
    assert value(samples, "dustpan_trade_received_to_submitted_seconds_sum") == pytest.approx(
        (sent - received).total_seconds(),
        abs=1e-6,  # float-ok: a parsed sample, to the microsecond
    )


def test_calls_in_flight_count_a_held_order_call_under_its_execution_pool(
    clean_database: str, broker_url: str, tmp_path: Path, log_dir: Path, books: Books
) -> None:
    with AlpacaStub() as stub:
        stub.hold_symbols = {"HOLD"}
        env = alpaca_fleet_env(
            clean_database, broker_url, tmp_path / "data", stub, DUSTPAN_ALPACA_TIMEOUT_SECONDS="120"
        )
        fleet = Fleet(env, log_dir)
        try:
            fleet.start_api()
            fleet.start_worker()  # no --queues: the execution pool is the child node io-<name>
            with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
                assert not calls_in_flight(scrape(client))
                post_trades(client, WEBHOOK_SECRET, [trade("h-1", "HOLD", "buy", "1")])
                wait_for(lambda: stub.held_posts["HOLD"] == 1, 30, "the order POST to hang at the stub")
                held = calls_in_flight(scrape(client))
                stub.release_held()
                wait_for(lambda: books.drained(), 60, "the held order to be recorded")
                after = calls_in_flight(scrape(client))
        finally:
            stub.release_held()
            fleet.stop()
    [(pool, n)] = held.items()
    assert n == 1
    assert pool.startswith("io-test1-") and pool.endswith(f"@{socket.gethostname()}"), pool
    assert not after  # the claim went with the recorded answer


def calls_in_flight(samples: Samples) -> dict[str, float]:  # float-ok: parsed samples
    return {
        dict(labels)["pool"]: n for (name, labels), n in samples.items() if name == "dustpan_brokerage_calls_in_flight"
    }
