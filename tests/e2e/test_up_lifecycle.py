"""`dustpan up` owns its children (SPEC section 2): a closed terminal (SIGHUP), SIGTERM or even
SIGKILL of `up` leaves no process of its tree behind, and the next `up` in the same directory
starts clean; a second `up` beside a live one is refused, and leftovers of a dead one replaced.

Real processes throughout: `up` starts the embedded PostgreSQL and Redis, the API, a worker
and Beat under a temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.test_cli import (
    DUSTPAN,
    _alive,
    _healthy,
    clean_env,
    describe,
    dustpan,
    logs_tail,
    processes_under,
)
from tests.support.fleet import free_port, wait_for

START_TIMEOUT = 120
GONE_TIMEOUT = 45


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A fresh working directory; whatever a failed test left running under it is killed."""
    yield tmp_path
    leftovers = processes_under(tmp_path)
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(leftovers, timeout=10)


class Up:
    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as log:
            # Own session, as a terminal's shell gives it: the signals below reach `up` alone.
            self.process = subprocess.Popen(
                [*DUSTPAN, "up", "--port", str(self.port)],
                env=clean_env(),
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return f"{self.log_path.read_text(errors='replace')}\n{logs_tail(self.workdir)}"

    def wait_healthy(self) -> list[psutil.Process]:
        """Every process of its tree, once its API answers."""
        wait_for(lambda: self.process.poll() is not None or _healthy(self.port), START_TIMEOUT, "up to be healthy")
        assert self.process.poll() is None, self.output()
        tree = psutil.Process(self.process.pid).children(recursive=True)
        commands = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "postgres" in commands and "redis" in commands and "worker" in commands, commands
        return tree

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(GONE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def assert_all_gone(tree: list[psutil.Process], workdir: Path, output: str) -> None:
    with contextlib.suppress(psutil.Error):
        psutil.wait_procs(tree, timeout=GONE_TIMEOUT)
    survivors = [p for p in tree if _alive(p)]
    assert survivors == [], f"{describe(survivors)}\n{output}"
    wait_for(lambda: processes_under(workdir) == [], 10, "nothing left under the directory")


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGKILL], ids=["sighup", "sigterm", "sigkill"])
def test_signal_to_up_leaves_no_process_and_the_next_up_starts_clean(directory: Path, sig: signal.Signals) -> None:
    first = Up(directory, "first")
    try:
        tree = first.wait_healthy()
        first.process.send_signal(sig)
        first.process.wait(GONE_TIMEOUT)
        assert_all_gone(tree, directory, first.output())
    finally:
        first.stop()

    second = Up(directory, "second")
    try:
        second.wait_healthy()
        assert "restart" not in second.output(), second.output()
    finally:
        second.stop()
    assert second.process.returncode == 0, second.output()


def test_second_up_beside_a_live_one_is_refused_with_one_line(directory: Path) -> None:
    first = Up(directory, "first")
    try:
        first.wait_healthy()
        done = dustpan("up", "--port", str(free_port()), env=clean_env(), cwd=directory, timeout=60)
        assert done.returncode == 2, done.stdout + done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert "dustpan up is already running" in line and str(first.process.pid) in line, done.stderr
        assert _healthy(first.port), first.output()
    finally:
        first.stop()
    assert first.process.returncode == 0, first.output()


def test_next_up_stops_a_child_a_dead_up_left_running(directory: Path) -> None:
    data_dir = directory / ".dustpan"
    data_dir.mkdir()
    # A process that looks like one of up's children (a `workers.cli` command), recorded by an
    # `up` that no longer exists: as if its death signal had been lost.
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "workers.cli", "worker"], start_new_session=True
    )
    record = {"pid": 999999, "api_url": "http://127.0.0.1:1", "children": {"worker": leftover.pid}}
    (data_dir / "up.json").write_text(json.dumps(record))
    up = Up(directory, "up")
    try:
        up.wait_healthy()
        assert leftover.wait(5) is not None
        assert f"worker (pid {leftover.pid})" in up.output(), up.output()
    finally:
        up.stop()
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_up_on_a_busy_port_exits_2_naming_the_port(directory: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = dustpan("up", "--port", str(port), env=clean_env(), cwd=directory, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"port {port}" in done.stderr.strip().splitlines()[-1], done.stderr


def test_second_terminal_api_flower_and_demo_use_the_running_up(directory: Path) -> None:
    up = Up(directory, "up")
    extra: list[subprocess.Popen[bytes]] = []
    try:
        up.wait_healthy()
        stored = json.loads((directory / ".dustpan" / "secrets.json").read_text())
        api_port, flower_port = free_port(), free_port()
        for argv in (["api", "--port", str(api_port)], ["flower", "--port", str(flower_port)]):
            log = (directory / f"second-{argv[0]}.log").open("wb")
            # No DUSTPAN_* variable at all: what a second terminal has.
            extra.append(subprocess.Popen([*DUSTPAN, *argv], env=clean_env(), cwd=directory, stdout=log, stderr=log))
        token = {"Authorization": f"Bearer {stored['api_token']}"}
        wait_for(lambda: _answers(f"http://127.0.0.1:{api_port}/accumulators", headers=token), 60, "the second api")
        flower = f"http://127.0.0.1:{flower_port}/api/workers"
        auth = (stored["flower_user"], stored["flower_password"])
        wait_for(lambda: _answers(flower, auth=auth), 60, "the second flower with up's password")
        assert httpx.get(flower, timeout=5).status_code == 401

        demo = dustpan("demo", "--trades", "60", env=clean_env(), cwd=directory, timeout=180)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "using the dustpan up already running here" in demo.stdout, demo.stdout
        assert "audit ok" in demo.stdout, demo.stdout
        assert up.process.poll() is None, up.output()
    finally:
        for process in extra:
            process.terminate()
            process.wait(30)
        up.stop()


def _answers(url: str, **options: object) -> bool:
    try:
        return httpx.get(url, timeout=5, **options).status_code == 200  # type: ignore[arg-type]
    except httpx.HTTPError:
        return False


def test_closed_terminal_while_up_is_still_starting_leaves_no_process(directory: Path) -> None:
    up = Up(directory, "up")
    try:
        wait_for(lambda: "starting embedded" in up.output() or up.process.poll() is not None, 60, "up to start")
        tree = psutil.Process(up.process.pid).children(recursive=True)
        up.process.send_signal(signal.SIGHUP)
        up.process.wait(GONE_TIMEOUT)
        assert_all_gone(tree, directory, up.output())
    finally:
        up.stop()
    second = Up(directory, "second")
    try:
        second.wait_healthy()
    finally:
        second.stop()
    assert second.process.returncode == 0, second.output()
