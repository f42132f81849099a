"""The `dustpan` console script as a user runs it: settings errors, audit, demo and up (SPEC section 2).

Every command runs as a real subprocess (`python -m workers.cli`, what the console script calls)
with an environment stripped of the caller's DUSTPAN_* variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
import psycopg2
import pytest

from tests.support.fleet import free_port, wait_for
from workers.settings import read_settings

DUSTPAN = [sys.executable, "-m", "workers.cli"]
DEMO_TIMEOUT = 240
STOP_TIMEOUT = 30


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(settings)
    return env


def dustpan(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DUSTPAN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def processes_under(directory: Path) -> list[psutil.Process]:
    """Live processes whose command line or working directory mentions directory."""
    names = {str(directory), str(directory.resolve())}
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        where = " ".join([*(process.info["cmdline"] or []), process.info["cwd"] or ""])
        if any(name in where for name in names):
            found.append(process)
    return found


def describe(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        try:
            lines.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.Error:
            lines.append(f"{process.pid} (gone)")
    return "\n".join(lines)


def logs_tail(workdir: Path, lines: int = 40) -> str:
    parts = []
    for log in sorted((workdir / ".dustpan").rglob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.relative_to(workdir)}\n" + "\n".join(text))
    return "\n".join(parts)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A fresh working directory; whatever the test started under it is killed afterwards."""
    yield tmp_path
    leftovers = processes_under(tmp_path)
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(leftovers, timeout=10)


# --- settings --------------------------------------------------------------------------------


def _yaml(text: str) -> dict[str, str]:
    """Settings that point DUSTPAN_CONFIG at a file holding text (written by the test)."""
    return {"DUSTPAN_CONFIG": YAML_FILE, YAML_TEXT: text}


YAML_FILE = "dustpan.yaml"
YAML_TEXT = "yaml text"  # not a variable name: the test writes it to YAML_FILE instead


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        pytest.param({"DUSTPAN_BROKERAGE": "robinhood"}, "DUSTPAN_BROKERAGE", id="unknown brokerage"),
        pytest.param({"DUSTPAN_PAPER__FAIL_RATE": "2"}, "DUSTPAN_PAPER__FAIL_RATE", id="fail rate above 1"),
        pytest.param({"DUSTPAN_DATABASE_URL": "mysql://x"}, "DUSTPAN_DATABASE_URL", id="mysql database url"),
        pytest.param({"DUSTPAN_BROKER_URL": "amqp://x"}, "DUSTPAN_BROKER_URL", id="amqp broker url"),
        pytest.param(
            {"DUSTPAN_WEBHOOK__MAX_BODY_BYTES": "lots"},
            "DUSTPAN_WEBHOOK__MAX_BODY_BYTES",
            id="body limit not a number",
        ),
        pytest.param({"DUSTPAN_PAPER__BOGUS": "1"}, "DUSTPAN_PAPER__BOGUS", id="unknown nested setting"),
        pytest.param(
            {"DUSTPAN_SCHEDULE__SWEEP_SECONDS": "inf"},
            "DUSTPAN_SCHEDULE__SWEEP_SECONDS",
            id="infinite seconds",
        ),
        pytest.param(
            _yaml("accumulation: {threshold: 0.5}\n"),
            "DUSTPAN_ACCUMULATION__THRESHOLD",
            id="yaml threshold 0.5",
        ),
        pytest.param(_yaml("paper: {partial_fill: 0.1}\n"), "DUSTPAN_PAPER__PARTIAL_FILL", id="yaml unknown key"),
        pytest.param(_yaml("- paper\n"), "DUSTPAN_CONFIG", id="yaml not a mapping"),
        pytest.param({"DUSTPAN_CONFIG": "missing.yaml"}, "DUSTPAN_CONFIG", id="yaml file missing"),
        pytest.param(
            _yaml("accumulation: {threshold: 2\n  x: [\n"),
            "DUSTPAN_CONFIG",
            id="yaml syntax error",
        ),
        pytest.param(
            {"DUSTPAN_PAPER": "{bad"},
            "DUSTPAN_PAPER",
            id="section given as bad JSON",
        ),
    ],
)
def test_bad_setting_stops_with_one_line_naming_it(workdir: Path, settings: dict[str, str], named: str) -> None:
    settings = dict(settings)
    if YAML_TEXT in settings:
        (workdir / YAML_FILE).write_text(settings.pop(YAML_TEXT))
    done = dustpan("migrate", env=clean_env(**settings), cwd=workdir)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0], done.stderr
    assert done.stdout == ""


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No DUSTPAN_* variables but a DUSTPAN_CONFIG file; returns the file to write."""
    for name in [n for n in os.environ if n.startswith("DUSTPAN_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "dustpan.yaml"
    monkeypatch.setenv("DUSTPAN_CONFIG", str(config))
    return config


def test_yaml_decimal_is_read_exactly(settings_env: Path) -> None:
    settings_env.write_text("paper: {partial_fill_ratio: 0.1}\n")
    ratio = read_settings().paper.partial_fill_ratio
    assert ratio == Decimal("0.1")
    assert str(ratio) == "0.1"


def test_environment_overrides_yaml_setting_by_setting(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env.write_text("paper: {partial_fill_ratio: 0.1, fail_rate: 0.3}\n")
    monkeypatch.setenv("DUSTPAN_PAPER__FAIL_RATE", "0.25")
    paper = read_settings().paper
    assert (paper.partial_fill_ratio, paper.fail_rate) == (Decimal("0.1"), Decimal("0.25"))


# --- audit -----------------------------------------------------------------------------------


@pytest.fixture
def audit_env(clean_database: str, broker_url: str) -> dict[str, str]:
    return clean_env(DUSTPAN_DATABASE_URL=clean_database, DUSTPAN_BROKER_URL=broker_url)


def test_audit_of_clean_books_exits_0(workdir: Path, audit_env: dict[str, str]) -> None:
    done = dustpan("audit", env=audit_env, cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit ok" in done.stdout


def test_audit_of_corrupted_books_exits_1_and_names_the_symbol(
    workdir: Path, audit_env: dict[str, str], clean_database: str
) -> None:
    connection = psycopg2.connect(clean_database)
    with connection, connection.cursor() as cursor:
        # An accumulated trade whose quantity no accumulator or execution accounts for.
        cursor.execute(
            "INSERT INTO trades"
            " (id, symbol, side, quantity, price, executed_at, content_hash, status, open_quantity)"
            " VALUES ('x', 'ZZZ', 'buy', 1.5, 10, now(), 'h', 'accumulated', 1.5)"
        )
        cursor.execute("INSERT INTO accumulators (symbol, net_quantity) VALUES ('ZZZ', 0)")
    connection.close()

    table = dustpan("audit", env=audit_env, cwd=workdir)
    assert table.returncode == 1, table.stdout + table.stderr
    assert "ZZZ" in table.stdout

    as_json = dustpan("audit", "--json", env=audit_env, cwd=workdir)
    assert as_json.returncode == 1, as_json.stdout + as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    [zzz] = [s for s in report["symbols"] if s["symbol"] == "ZZZ"]
    assert zzz["balanced"] is False
    assert Decimal(zzz["trades_total"]) == Decimal("1.5")
    assert Decimal(zzz["residual"]) == 0


# --- demo and up on embedded services --------------------------------------------------------


def run_demo(workdir: Path, trades: int) -> str:
    port = str(free_port())
    try:
        done = dustpan(
            "demo",
            "--trades",
            str(trades),
            "--port",
            port,
            env=clean_env(),
            cwd=workdir,
            timeout=DEMO_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"demo --trades {trades} ran over {DEMO_TIMEOUT} s\n{exc.stdout!r}\n{logs_tail(workdir)}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{output}\n{logs_tail(workdir)}"
    assert "audit ok" in done.stdout, f"{output}\n{logs_tail(workdir)}"
    return done.stdout


def test_demo_twice_in_one_directory_reuses_the_embedded_data(workdir: Path) -> None:
    run_demo(workdir, 300)
    assert (workdir / ".dustpan" / "pg" / "PG_VERSION").exists()
    second = run_demo(workdir, 100)
    assert re.search(r"\baccumulated 400\b", second), f"{second}\n{logs_tail(workdir)}"
    assert processes_under(workdir) == [], describe(processes_under(workdir))


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_stops_every_process_it_started_on_ctrl_c(workdir: Path) -> None:
    port = free_port()
    log_path = workdir / "up.log"
    with log_path.open("wb") as log:
        # Own process group, so that the SIGINT below is what Ctrl-C in its terminal would send.
        up = subprocess.Popen(
            [*DUSTPAN, "up", "--port", str(port)],
            env=clean_env(),
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output() -> str:
        return f"{log_path.read_text(errors='replace')}\n{logs_tail(workdir)}"

    try:
        wait_for(lambda: up.poll() is not None or _healthy(port), 120, "dustpan up to answer /health")
        assert up.poll() is None, output()
        started = psutil.Process(up.pid).children(recursive=True)
        commands = " ".join(" ".join(p.cmdline()) for p in started)
        assert "postgres" in commands and "redis" in commands and "worker" in commands, commands

        os.killpg(up.pid, signal.SIGINT)
        began = time.monotonic()
        try:
            code = up.wait(STOP_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dustpan up still running {STOP_TIMEOUT + 5} s after SIGINT\n{output()}")
        took = time.monotonic() - began
        assert code == 0, output()
        assert took <= STOP_TIMEOUT, f"stopping took {took:.0f} s\n{output()}"
        survivors = [p for p in started if _alive(p)]
        assert survivors == [], describe(survivors)
        assert processes_under(workdir) == [], describe(processes_under(workdir))
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
