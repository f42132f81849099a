"""The CLI's exit statuses and one-line failures (SPEC section 2): 0 success, 1 a failed
operation, 2 bad usage or setting, 3 a service unreachable; `--verbose` adds the traceback.

Each unreachable service is a closed port on this machine; the commands run as real processes.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_cli import DUSTPAN, clean_env, dustpan
from tests.support.fleet import free_port, wait_for

SECRET = "hunter2-not-to-be-shown"


def closed_database_url() -> str:
    return f"postgresql://dustpan:{SECRET}@127.0.0.1:{free_port()}/dustpan"


def closed_broker_url() -> str:
    return f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert SECRET not in stderr
    return lines[0]


@pytest.mark.parametrize("command", [["audit"], ["report", "--json"], ["freezes"], ["migrate"], ["up"], ["demo"]])
def test_unreachable_database_exits_3_naming_it_and_its_url_without_credentials(
    tmp_path: Path, command: list[str]
) -> None:
    url = closed_database_url()
    env = clean_env(DUSTPAN_DATABASE_URL=url, DUSTPAN_BROKER_URL=closed_broker_url())
    done = dustpan(*command, env=env, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    line = one_line(done.stderr)
    assert line.startswith("dustpan: database unreachable at postgresql://127.0.0.1:"), line
    assert done.stdout == ""


@pytest.mark.parametrize(
    "command", [["worker", "--wait", "0"], ["beat", "--wait", "2"], ["flower", "--insecure", "--wait", "0"]]
)
def test_unreachable_broker_exits_3_naming_it(tmp_path: Path, clean_database: str, command: list[str]) -> None:
    env = clean_env(DUSTPAN_DATABASE_URL=clean_database, DUSTPAN_BROKER_URL=closed_broker_url())
    done = dustpan(*command, env=env, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    line = one_line(done.stderr)
    assert line.startswith("dustpan: Celery broker unreachable at redis://127.0.0.1:"), line


@pytest.mark.parametrize("command", [["sync"], ["cleanup"], ["scan", "--json"]])
def test_unreachable_brokerage_exits_3_naming_it(
    tmp_path: Path, clean_database: str, broker_url: str, command: list[str]
) -> None:
    env = clean_env(
        DUSTPAN_DATABASE_URL=clean_database,
        DUSTPAN_BROKER_URL=broker_url,
        DUSTPAN_BROKERAGE="alpaca",
        DUSTPAN_ALPACA_TRADING_URL=f"http://127.0.0.1:{free_port()}",
        DUSTPAN_ALPACA_KEY_ID="key",
        DUSTPAN_ALPACA_SECRET_KEY=SECRET,
    )
    done = dustpan(*command, env=env, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    line = one_line(done.stderr)
    assert "brokerage of account default unreachable at http://127.0.0.1:" in line, line


def test_verbose_adds_the_traceback_to_the_same_line(tmp_path: Path) -> None:
    env = clean_env(DUSTPAN_DATABASE_URL=closed_database_url())
    done = dustpan("audit", "--verbose", env=env, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("dustpan: database unreachable at")


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["audit", "--bogus"], {}, id="unknown option"),
        pytest.param(["frobnicate"], {}, id="unknown command"),
        pytest.param(["audit"], {}, id="no database configured"),
        pytest.param(["api"], {"DUSTPAN_DATABASE_URL": "postgresql://x@127.0.0.1/x"}, id="api without broker"),
        pytest.param(["up", "--host", "10.255.255.1"], {}, id="up on an address this machine lacks"),
        pytest.param(["worker", "--concurrency", "two"], {}, id="not a number"),
    ],
)
def test_bad_usage_or_missing_setting_exits_2(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    done = dustpan(*args, env=clean_env(**env), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("dustpan")  # argparse: "dustpan worker: error: ..."


def test_failed_operation_exits_1_with_one_line(tmp_path: Path, clean_database: str, broker_url: str) -> None:
    env = clean_env(DUSTPAN_DATABASE_URL=clean_database, DUSTPAN_BROKER_URL=broker_url)
    done = dustpan("unfreeze", "AAPL", env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.strip() == "AAPL is not frozen"


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    done = dustpan("--version", env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip().startswith("dustpan 0.")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["worker"], "(default: 16)"),  # --io-concurrency: the threads of the execution pool
        (["up"], "(default: 5555)"),
        (["api"], "(default: 127.0.0.1)"),
        (["demo"], "(default: 3000)"),
    ],
)
def test_subcommand_help_shows_the_defaults(tmp_path: Path, command: list[str], expected: str) -> None:
    done = dustpan(*command, "--help", env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0
    assert expected in " ".join(done.stdout.split())


def test_a_worker_started_while_the_broker_is_down_waits_for_it_and_starts(tmp_path: Path, clean_database: str) -> None:
    from workers.embedded import EmbeddedRedis

    port = free_port()
    env = clean_env(DUSTPAN_DATABASE_URL=clean_database, DUSTPAN_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [*DUSTPAN, "worker", "--wait", "60", "--concurrency", "1"], env=env, cwd=tmp_path, stdout=log, stderr=log
        )
    redis_server = EmbeddedRedis(tmp_path / "redis-data", port=port)
    try:
        time.sleep(3)  # the broker is down at the worker's start, as during a restart
        assert worker.poll() is None, log_path.read_text()
        redis_server.start()
        wait_for(lambda: "ready" in log_path.read_text(errors="replace"), 60, "the worker to start once Redis is up")
    finally:
        worker.terminate()
        worker.wait(30)
        redis_server.stop()
