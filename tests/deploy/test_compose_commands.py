"""Each docker-compose.yml service's command, run here as a real process.

No Docker engine is needed: the command is read from the compose file, its `dustpan` is
replaced by this interpreter's `python -m workers.cli` (what the console script calls), and its
environment is .env.example with the compose hostnames `postgres` and `redis` pointed at the
test's own PostgreSQL and Redis. Listening addresses become 127.0.0.1 and published ports free
local ones; nothing else in the command changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import psycopg2
import pytest

from tests.conftest import Services
from tests.deploy.compose_files import command, env_example, services
from tests.integration.conftest import Books
from tests.support.feed import post_trades
from tests.support.fleet import free_port, wait_for

pytestmark = pytest.mark.integration

DUSTPAN = [sys.executable, "-m", "workers.cli"]
LISTEN_OPTIONS = {"--host", "--address"}


def compose_env(database_url: str, broker_url: str, **overrides: str) -> dict[str, str]:
    """.env.example as a container sees it, with the compose hostnames mapped to the test's servers."""
    settings = env_example()
    assert urlsplit(settings["DUSTPAN_DATABASE_URL"]).hostname == "postgres"
    assert urlsplit(settings["DUSTPAN_BROKER_URL"]).hostname == "redis"
    settings.update(DUSTPAN_DATABASE_URL=database_url, DUSTPAN_BROKER_URL=broker_url, **overrides)
    env = {name: value for name, value in os.environ.items() if not name.startswith("DUSTPAN_")}
    return {**env, **settings}


def local_argv(service: str) -> tuple[list[str], int | None]:
    """The service's command for this machine, and the free port it was given (if it listens)."""
    argv = command(service)
    assert argv[0] == "dustpan", argv
    argv, port = [*DUSTPAN, *argv[1:]], None
    for index, option in enumerate(argv[:-1]):
        if option in LISTEN_OPTIONS:
            argv[index + 1] = "127.0.0.1"
        elif option == "--port":
            port = free_port()
            argv[index + 1] = str(port)
    return argv, port


class Role:
    """One compose service's command as a real process, in its own session, logging to a file."""

    def __init__(self, service: str, env: dict[str, str], workdir: Path) -> None:
        self.service, self.env, self.workdir = service, env, workdir
        self.argv, self.port = local_argv(service)
        self.log_path = workdir / f"{service}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Role:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return f"--- {self.service} log ---\n" + "\n".join(self.log().splitlines()[-lines:])

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL for it and any of its children still alive."""
        if self.process is None or self.process.poll() is not None:
            return
        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(self.process.pid).children(recursive=True)  # e.g. the prefork pool
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@pytest.fixture
def start_role(tmp_path: Path) -> Iterator[Callable[..., Role]]:
    roles: list[Role] = []

    def start(service: str, env: dict[str, str]) -> Role:
        role = Role(service, env, tmp_path)
        roles.append(role)
        return role.start()

    try:
        yield start
    finally:
        for role in reversed(roles):
            role.stop()


def wait_until(role: Role, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """wait_for, with the role's log as it is when the wait fails."""
    try:
        wait_for(condition, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{role.tail()}") from None


def answers(url: str, auth: tuple[str, str] | None = None) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, auth=auth, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def start_api(start_role: Callable[..., Role], env: dict[str, str]) -> Role:
    api = start_role("api", env)
    wait_until(api, answers(f"http://127.0.0.1:{api.port}/health"), "the api service's /health")
    return api


def start_worker(start_role: Callable[..., Role], service: str, env: dict[str, str]) -> Role:
    worker = start_role(service, env)
    wait_until(worker, lambda: " ready" in worker.log() or not worker.running(), f"{service} to be ready")
    assert worker.running(), worker.tail()
    return worker


def healthcheck(role: Role) -> subprocess.CompletedProcess[str]:
    """The service's compose healthcheck, run here as the container would run it."""
    test = list(services()[role.service]["healthcheck"]["test"])
    assert test[:2] == ["CMD", "python"], test
    published = {"api": "8000", "flower": "5555"}.get(role.service)
    argv = [sys.executable, *test[2:]]
    if published and role.port:
        argv = [part.replace(f":{published}/", f":{role.port}/") for part in argv]
    return subprocess.run(argv, env=role.env, cwd=role.workdir, capture_output=True, text=True, timeout=60)


def assert_healthy(role: Role) -> None:
    done = healthcheck(role)
    assert done.returncode == 0, f"{done.stderr}\n{role.tail()}"


def post_fractional_buys(api: Role, env: dict[str, str], symbol: str) -> list[str]:
    """1.5 shares in two signed fractional trades: one whole-share execution and a 0.5 residual."""
    trades = [
        {
            "id": f"compose-{symbol}-{n}",
            "symbol": symbol,
            "side": "buy",
            "quantity": "0.75",
            "price": "101.25",
            "executed_at": f"2026-11-02T14:30:0{n}Z",
        }
        for n in range(2)
    ]
    secret = env["DUSTPAN_WEBHOOK_SECRET"].split(",")[0]
    with httpx.Client(base_url=f"http://127.0.0.1:{api.port}", timeout=10) as client:
        assert post_trades(client, secret, trades)["accepted"] == 2
    return [trade["id"] for trade in trades]


def test_migrate_service_upgrades_an_empty_database_to_head_and_is_rerunnable(
    services: Services, tmp_path: Path
) -> None:
    base, _, _ = services.admin_database_url.rpartition("/")
    name = f"dustpan_compose_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(services.admin_database_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        env = compose_env(f"{base}/{name}", services.broker_url)
        argv, _ = local_argv("migrate")
        for attempt in ("first", "second"):  # compose runs it again on every `up`
            done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{attempt} migrate: {done.stdout}{done.stderr}"
        books = Books(f"{base}/{name}")
        assert books.value("SELECT count(*) FROM alembic_version") == 1
        assert books.value("SELECT to_regclass('trades') IS NOT NULL AND to_regclass('job_runs') IS NOT NULL")
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_api_ingestion_and_execution_services_take_a_trade_to_a_filled_order(
    clean_database: str, broker_url: str, start_role: Callable[..., Role]
) -> None:
    env = compose_env(clean_database, broker_url)
    api = start_api(start_role, env)
    ingestion = start_worker(start_role, "worker-ingestion", env)
    execution = start_worker(start_role, "worker-execution", env)
    ids = post_fractional_buys(api, env, "CMPS")

    books = Books(clean_database)
    accumulated = "SELECT id FROM trades WHERE status = 'accumulated' AND id = ANY(%s)"
    wait_until(ingestion, lambda: len(books.rows(accumulated, ids)) == 2, "worker-ingestion to accumulate the trades")
    # the execution pool sends the whole share to the (paper) broker
    executions = "SELECT status, filled_quantity FROM executions WHERE symbol = 'CMPS'"
    wait_until(execution, lambda: books.rows(executions) == [("filled", Decimal(1))], "one filled whole-share order")
    assert books.value("SELECT net_quantity FROM accumulators WHERE symbol = 'CMPS'") == Decimal("0.5")
    # the bulkhead: each pool ran only its own queue's tasks
    assert "Task ingestion.accumulate[" in ingestion.log() and "Task execution.submit[" not in ingestion.log()
    assert "Task execution.submit[" in execution.log() and "Task ingestion.accumulate[" not in execution.log()
    for role in (api, ingestion, execution):
        assert_healthy(role)


def test_beat_service_sends_the_schedule_and_worker_ops_runs_it(
    clean_database: str, broker_url: str, start_role: Callable[..., Role]
) -> None:
    env = compose_env(clean_database, broker_url, DUSTPAN_SCHEDULE__SWEEP_SECONDS="1")
    orders = start_worker(start_role, "worker-ingestion", env)
    ops = start_worker(start_role, "worker-ops", env)
    beat = start_role("beat", env)

    wait_until(beat, lambda: "Sending due task sweep-rewake" in beat.log(), "beat to send sweep.rewake")
    books = Books(clean_database)
    sweeps = "SELECT id FROM job_runs WHERE job = 'sweep.rewake' AND outcome = 'ok'"
    wait_until(ops, lambda: len(books.rows(sweeps)) >= 2, "worker-ops to record sweep.rewake runs")
    assert "Task sweep.rewake[" in ops.log()
    assert "Task sweep.rewake[" not in orders.log(), "worker-ingestion consumed the ops queue"
    assert beat.running(), beat.tail()
    for role in (orders, ops, beat):
        assert_healthy(role)
    orders.stop()  # scoped to its own node: a stopped worker is unhealthy while the other answers
    assert healthcheck(orders).returncode == 1
    assert_healthy(ops)


def test_flower_service_lists_the_fleet_tasks_behind_basic_auth(
    clean_database: str, broker_url: str, start_role: Callable[..., Role]
) -> None:
    env = compose_env(clean_database, broker_url)
    credentials = (env["DUSTPAN_FLOWER_USER"], env["DUSTPAN_FLOWER_PASSWORD"])
    flower = start_role("flower", env)
    tasks_url = f"http://127.0.0.1:{flower.port}/api/tasks"
    wait_until(flower, answers(tasks_url, auth=credentials), "flower to answer /api/tasks with basic auth")
    assert_healthy(flower)
    api = start_api(start_role, env)
    start_worker(start_role, "worker-ingestion", env)
    post_fractional_buys(api, env, "FLWR")

    def task_names() -> set[str]:
        response = httpx.get(tasks_url, auth=credentials, timeout=5)
        assert response.status_code == 200, response.text
        return {str(task.get("name")) for task in response.json().values()}

    wait_until(flower, lambda: "ingestion.accumulate" in task_names(), "flower to list the task")
    assert httpx.get(tasks_url, timeout=5).status_code == 401
    assert httpx.get(tasks_url, auth=(credentials[0], "wrong-password"), timeout=5).status_code == 401
