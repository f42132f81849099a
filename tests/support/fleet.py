"""Real dustpan processes for tests: API server, Celery workers and Beat, as a user runs them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:  # float-ok
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class DustpanProcess:
    """One `python -m workers.cli <role> ...` child with its own log file."""

    module = "workers.cli"

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.args, self.env, self.log_path = name, args, env, log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DustpanProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_children(self) -> int:
        """SIGKILL the prefork pool processes (the main process requeues their tasks)."""
        victims = self.children()
        for child in victims:
            child.send_signal(signal.SIGKILL)
        return len(victims)

    def kill(self) -> None:
        """SIGKILL the main process and its children: nothing gets to clean up."""
        for proc in [*self.children(), psutil.Process(self.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Fleet:
    """API + N workers (+ Beat) against the test's database and Redis."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.api_port = free_port()
        self.api: DustpanProcess | None = None
        self.workers: list[DustpanProcess] = []
        self.beats: list[DustpanProcess] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_api(self) -> None:
        self.api = DustpanProcess("api", ["api", "--port", str(self.api_port)], self.env, self.log_dir).start()
        wait_for(self._api_healthy, 60, f"the API to answer /health\n{self.api.log_tail()}")

    def start_worker(self, concurrency: int = 2, queues: str | None = None) -> DustpanProcess:
        n = len(self.workers) + 1
        args = ["worker", "--concurrency", str(concurrency), "--name", f"test{n}-{os.getpid()}@%h"]
        if queues:
            args += ["--queues", queues]
        worker = DustpanProcess(f"worker{n}", args, self.env, self.log_dir).start()
        self.workers.append(worker)
        wait_for(
            lambda: "ready" in worker.log_path.read_text(errors="replace") if worker.log_path.exists() else False,
            60,
            f"worker {n} to be ready",
        )
        return worker

    def restart_worker(self, worker: DustpanProcess) -> None:
        worker.stop()
        worker.log_path.write_text("")
        worker.start()
        wait_for(lambda: "ready" in worker.log_path.read_text(errors="replace"), 60, "worker to be ready again")

    def start_beat(self) -> DustpanProcess:
        beat = DustpanProcess(f"beat{len(self.beats) + 1}", ["beat"], self.env, self.log_dir).start()
        self.beats.append(beat)
        return beat

    def stop(self) -> None:
        for process in [*self.beats, *self.workers, self.api]:
            if process is not None:
                process.stop()

    def _api_healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
