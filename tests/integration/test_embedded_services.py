"""The embedded PostgreSQL and Redis: persistence, crashes, ports, ownership and cleanup.

Never uses the machine's own servers on 5432/6379: every server here is started by the
test in its own tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest
import redis

from workers.embedded import (
    RESERVED_PORTS,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServiceError,
    EmbeddedServices,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cleanup() -> Iterator[list[EmbeddedPostgres | EmbeddedRedis]]:
    """Services to stop after the test, whatever happened in it."""
    services: list[EmbeddedPostgres | EmbeddedRedis] = []
    yield services
    for service in services:
        service.stop()


def _execute(url: str, statement: str) -> None:
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cur:
            cur.execute(statement)
    finally:
        connection.close()


def _count(url: str, table: str) -> int:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        connection.close()


def _insert_rows(url: str, rows: int) -> None:
    _execute(url, "CREATE TABLE fills (id int PRIMARY KEY)")
    connection = psycopg2.connect(url)
    connection.autocommit = True  # every row its own commit, the last one just before the crash
    try:
        with connection.cursor() as cur:
            for row in range(rows):
                cur.execute("INSERT INTO fills VALUES (%s)", (row,))
    finally:
        connection.close()


def _run_owner(script: str, data_dir: Path) -> subprocess.Popen[str]:
    """A separate owner process running script with data_dir; it prints a line when ready."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _kill_leftover(pid: int, home: Path) -> None:
    """A failed test must not leave a server behind; only ours, recognised by its directory."""
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        if Path(process.cwd()) == home.resolve():
            process.kill()


def test_second_start_on_the_same_dir_sees_the_row_and_the_key(tmp_path: Path) -> None:
    with EmbeddedServices(tmp_path, fsync=False) as services:
        _execute(services.database_url, "CREATE TABLE trades (id int); INSERT INTO trades VALUES (7)")
        redis.Redis.from_url(services.broker_url).set("queued", "task-1")
    assert not services.postgres.running and not services.redis.running

    with EmbeddedServices(tmp_path, fsync=False) as services:
        assert _count(services.database_url, "trades") == 1
        assert redis.Redis.from_url(services.broker_url).get("queued") == b"task-1"
        # Their own session: the terminal's Ctrl-C must not reach them before the owner.
        for pid in (services.postgres.pid, services.redis.pid):
            assert pid is not None and os.getsid(pid) == pid


def test_immediate_restart_keeps_every_committed_row(
    tmp_path: Path, cleanup: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    # fsync=False on purpose: a crash of PostgreSQL alone must not lose commits even then.
    postgres = EmbeddedPostgres(tmp_path, fsync=False)
    cleanup.append(postgres)
    postgres.start()
    url = postgres.url
    _insert_rows(url, 500)

    postgres.restart(immediate=True)

    assert postgres.url == url
    assert _count(url, "fills") == 500
    assert "automatic recovery in progress" in postgres.log_path.read_text()


def test_killed_servers_recover_on_the_next_start(
    tmp_path: Path, cleanup: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    postgres, broker = EmbeddedPostgres(tmp_path, fsync=False), EmbeddedRedis(tmp_path)
    cleanup += [postgres, broker]
    postgres.start()
    broker.start()
    _insert_rows(postgres.url, 200)
    redis.Redis.from_url(broker.url).rpush("celery", "a", "b")

    postgres.kill()
    broker.kill()
    assert (tmp_path / "pg" / "postmaster.pid").exists()  # stale: its pid is dead
    postgres.start()
    broker.start()

    assert _count(postgres.url, "fills") == 200
    assert redis.Redis.from_url(broker.url).lrange("celery", 0, -1) == [b"a", b"b"]


def test_two_clusters_at_once_get_different_free_ports(
    tmp_path: Path, cleanup: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    first, second = (
        EmbeddedPostgres(tmp_path / "a", fsync=False),
        EmbeddedPostgres(tmp_path / "b", fsync=False),
    )
    cleanup += [first, second]
    first.start()
    second.start()

    assert first.port != second.port
    assert not {first.port, second.port} & RESERVED_PORTS
    _execute(first.url, "SELECT 1")
    _execute(second.url, "SELECT 1")


def test_busy_port_is_replaced_by_a_free_one(tmp_path: Path, cleanup: list[EmbeddedPostgres | EmbeddedRedis]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        broker = EmbeddedRedis(tmp_path, port=busy)
        cleanup.append(broker)
        broker.start()

        assert broker.port != busy
        assert redis.Redis.from_url(broker.url).ping()


def test_second_owner_of_a_running_dir_is_refused(
    tmp_path: Path, cleanup: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    owner = EmbeddedRedis(tmp_path)
    cleanup.append(owner)
    owner.start()

    with pytest.raises(EmbeddedServiceError, match="owned by process"):
        EmbeddedRedis(tmp_path).start()
    assert redis.Redis.from_url(owner.url).ping()


def test_server_left_by_a_killed_owner_is_stopped_and_its_data_reused(
    tmp_path: Path, cleanup: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    owner = _run_owner(
        """
        import sys, time
        from workers.embedded import EmbeddedPostgres
        postgres = EmbeddedPostgres(sys.argv[1], fsync=False)
        postgres.start()
        print(postgres.pid, postgres.url, flush=True)
        time.sleep(60)
        """,
        tmp_path,
    )
    assert owner.stdout is not None
    pid, url = owner.stdout.readline().split()
    orphan = int(pid)
    try:
        _execute(url, "CREATE TABLE trades (id int); INSERT INTO trades VALUES (1)")
        owner.kill()  # SIGKILL: no atexit, no stop(); the postmaster lives on
        owner.wait()
        assert psutil.pid_exists(orphan)

        postgres = EmbeddedPostgres(tmp_path, fsync=False)
        cleanup.append(postgres)
        postgres.start()

        assert postgres.pid != orphan
        assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
        assert _count(postgres.url, "trades") == 1
    finally:
        owner.kill()
        _kill_leftover(orphan, tmp_path / "pg")


def test_sigterm_to_the_owner_stops_both_servers(tmp_path: Path) -> None:
    owner = _run_owner(
        """
        import sys, time
        from workers.embedded import EmbeddedServices
        with EmbeddedServices(sys.argv[1], fsync=False) as services:
            print(services.postgres.pid, services.redis.pid, flush=True)
            time.sleep(60)
        """,
        tmp_path,
    )
    assert owner.stdout is not None
    postgres_pid, redis_pid = (int(pid) for pid in owner.stdout.readline().split())
    try:
        owner.send_signal(signal.SIGTERM)

        assert owner.wait(timeout=30) == 128 + signal.SIGTERM
        assert not psutil.pid_exists(postgres_pid) and not psutil.pid_exists(redis_pid)
    finally:
        owner.kill()
        _kill_leftover(postgres_pid, tmp_path / "pg")
        _kill_leftover(redis_pid, tmp_path / "redis")
