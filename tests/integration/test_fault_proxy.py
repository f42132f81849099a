"""The fault proxy in front of the real PostgreSQL and Redis: it forwards, delays, resets and refuses.

Only delays the proxy itself injects are measured, and only as lower bounds.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator

import psycopg2
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import Services
from tests.support.fault_proxy import FaultProxy
from tests.support.fleet import free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_proxy(broker_url: str) -> Iterator[FaultProxy]:
    with FaultProxy.for_url(broker_url) as proxy:
        yield proxy


@pytest.fixture
def postgres_proxy(services: Services) -> Iterator[FaultProxy]:
    with FaultProxy.for_url(services.admin_database_url) as proxy:
        yield proxy


def redis_via(proxy: FaultProxy, broker_url: str) -> redis.Redis:
    # no client-side retries: the test wants to see each failure the proxy causes
    return redis.Redis.from_url(proxy.url_for(broker_url), retry=Retry(NoBackoff(), 0), socket_timeout=10)


def postgres_via(proxy: FaultProxy, services: Services) -> psycopg2.extensions.connection:
    return psycopg2.connect(proxy.url_for(services.admin_database_url), connect_timeout=10)


def select_one(connection: psycopg2.extensions.connection) -> object:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone()


def blocked_in_blpop(broker_url: str) -> bool:
    direct = redis.Redis.from_url(broker_url)
    try:
        return any(client["cmd"] == "blpop" for client in direct.client_list())
    finally:
        direct.close()


def catch(call: Callable[[], object]) -> list[Exception]:
    try:
        call()
    except Exception as error:
        return [error]
    return []


def test_url_for_swaps_only_host_and_port() -> None:
    with FaultProxy("db.internal", 5432) as proxy:  # nothing connects, so the upstream need not exist
        assert proxy.url_for("postgresql://postgres:pw@db.internal:5432/books?x=1") == (
            f"postgresql://postgres:pw@127.0.0.1:{proxy.port}/books?x=1"
        )
        assert proxy.url_for("redis://localhost:6390/0") == f"redis://127.0.0.1:{proxy.port}/0"


def test_redis_and_postgres_work_through_the_proxy_and_are_counted(
    redis_proxy: FaultProxy, postgres_proxy: FaultProxy, broker_url: str, services: Services
) -> None:
    client = redis_via(redis_proxy, broker_url)
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    connection = postgres_via(postgres_proxy, services)
    assert select_one(connection) == (1,)
    connection.close()
    client.close()
    for proxy in (redis_proxy, postgres_proxy):
        counts = proxy.counts()
        assert counts["connections"] == 1
        assert counts["bytes_up"] > 0 and counts["bytes_down"] > 0
        assert counts["resets_random"] == counts["resets_reset_all"] == counts["resets_refused"] == 0


def test_latency_is_added_to_each_direction_of_a_round_trip(redis_proxy: FaultProxy, broker_url: str) -> None:
    client = redis_via(redis_proxy, broker_url)
    client.ping()  # connect first: only the round trip is timed
    redis_proxy.latency_seconds = 0.05
    started = time.perf_counter()
    assert client.ping()
    assert time.perf_counter() - started >= 0.099  # 50 ms up + 50 ms down, injected by the proxy
    client.close()


def test_jitter_keeps_a_large_value_in_order(redis_proxy: FaultProxy, broker_url: str) -> None:
    client = redis_via(redis_proxy, broker_url)
    redis_proxy.latency_seconds, redis_proxy.jitter_seconds = 0.001, 0.01
    value = bytes(range(256)) * 8192  # 2 MiB: many chunks each way, each with its own random delay
    client.set("big", value)
    assert client.get("big") == value
    client.close()


def test_a_blocked_connection_does_not_stall_another(redis_proxy: FaultProxy, broker_url: str) -> None:
    redis_proxy.latency_seconds = 0.02
    popped: list[object] = []
    waiter = threading.Thread(target=lambda: popped.append(redis_via(redis_proxy, broker_url).blpop(["jobs"], 30)))
    waiter.start()
    wait_for(lambda: blocked_in_blpop(broker_url), timeout=10, what="the waiter to block in BLPOP behind the proxy")
    redis_via(redis_proxy, broker_url).rpush("jobs", "job-1")
    waiter.join()
    assert popped == [(b"jobs", b"job-1")]


def test_reset_all_breaks_open_connections_and_new_ones_work(
    redis_proxy: FaultProxy, postgres_proxy: FaultProxy, broker_url: str, services: Services
) -> None:
    # an idle pooled Redis connection is silently replaced by redis-py, so the open one is mid-command,
    # blocked in BLPOP as a Celery worker waits on its queue
    errors: list[Exception] = []
    client = redis_via(redis_proxy, broker_url)
    waiter = threading.Thread(target=lambda: errors.extend(catch(lambda: client.blpop(["jobs"], 30))))
    waiter.start()
    wait_for(lambda: blocked_in_blpop(broker_url), timeout=10, what="the client to block in BLPOP")
    connection = postgres_via(postgres_proxy, services)
    select_one(connection)
    assert redis_proxy.reset_all() == 1 and postgres_proxy.reset_all() == 1
    waiter.join()
    assert len(errors) == 1 and isinstance(errors[0], redis.ConnectionError)
    with pytest.raises(psycopg2.OperationalError):
        select_one(connection)
    assert client.ping()  # the pool opens a new connection
    fresh = postgres_via(postgres_proxy, services)
    assert select_one(fresh) == (1,)
    fresh.close()
    client.close()
    assert redis_proxy.counts()["resets_reset_all"] == postgres_proxy.counts()["resets_reset_all"] == 1


def test_reset_probability_one_resets_every_connection(
    redis_proxy: FaultProxy, postgres_proxy: FaultProxy, broker_url: str, services: Services
) -> None:
    redis_proxy.reset_probability = postgres_proxy.reset_probability = 1.0
    with pytest.raises(redis.ConnectionError):
        redis_via(redis_proxy, broker_url).ping()
    with pytest.raises(psycopg2.OperationalError):
        postgres_via(postgres_proxy, services)
    assert redis_proxy.counts()["resets_random"] >= 1 and postgres_proxy.counts()["resets_random"] >= 1
    redis_proxy.reset_probability = postgres_proxy.reset_probability = 0.0
    assert redis_via(redis_proxy, broker_url).ping()
    postgres_via(postgres_proxy, services).close()


def test_refuse_makes_connects_fail_until_lifted(
    redis_proxy: FaultProxy, postgres_proxy: FaultProxy, broker_url: str, services: Services
) -> None:
    redis_proxy.refuse = postgres_proxy.refuse = True
    with pytest.raises(redis.ConnectionError):
        redis_via(redis_proxy, broker_url).ping()
    with pytest.raises(psycopg2.OperationalError):
        postgres_via(postgres_proxy, services)
    assert redis_proxy.counts()["resets_refused"] == 1 and postgres_proxy.counts()["resets_refused"] >= 1
    assert redis_proxy.counts()["bytes_up"] == 0
    redis_proxy.refuse = postgres_proxy.refuse = False
    assert redis_via(redis_proxy, broker_url).ping()
    postgres_via(postgres_proxy, services).close()


def test_an_unreachable_upstream_resets_the_client_and_is_counted(broker_url: str) -> None:
    with FaultProxy("127.0.0.1", free_port()) as proxy:  # nothing listens there
        with pytest.raises(redis.ConnectionError):
            redis_via(proxy, broker_url).ping()
        assert proxy.counts()["upstream_failures"] == 1


def test_stop_closes_everything_and_leaks_nothing(
    broker_url: str, recwarn: pytest.WarningsRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    threads_before = set(threading.enumerate())
    proxy = FaultProxy.for_url(broker_url).start()
    client = redis_via(proxy, broker_url)
    client.ping()
    proxy.latency_seconds = 0.5
    pipeline = client.pipeline()
    pipeline.set("late", "1")
    errors: list[Exception] = []
    writer = threading.Thread(target=lambda: errors.extend(catch(pipeline.execute)))
    writer.start()
    time.sleep(0.1)  # its bytes now wait in the proxy's queue
    proxy.stop()
    writer.join()
    assert len(errors) == 1 and isinstance(errors[0], redis.ConnectionError)
    proxy.stop()  # idempotent
    assert set(threading.enumerate()) == threads_before  # the proxy's thread was joined
    with pytest.raises(redis.ConnectionError):
        client.ping()  # the pool finds its connection closed and cannot open another
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, ResourceWarning | RuntimeWarning)]
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]
