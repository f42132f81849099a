"""`dustpan up`: the whole stack in one terminal, as supervised child processes.

With no database or broker URL configured, an embedded PostgreSQL and Redis are started
under the data dir (a second `up` reuses their data). API, worker and Beat run as the
same `dustpan` commands a fleet runs; a child that dies is restarted; Ctrl-C stops all.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from workers.settings import SERVICES_FILE, Settings

if TYPE_CHECKING:
    from rich.live import Live

    from workers.embedded import EmbeddedPostgres, EmbeddedRedis

SECRETS_FILE = "secrets.json"
STATUS_EVERY_TERMINAL_SECONDS = 2
STATUS_EVERY_PIPE_SECONDS = 10


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        log = open(log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - the child owns it
        # Own process group: Ctrl-C reaches the supervisor, which stops children in order.
        self.process = subprocess.Popen(
            self.argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started_at = time.monotonic()

    def stop(self, timeout: float = 15.0) -> None:  # float-ok: seconds
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Stack(AbstractContextManager["Stack"]):
    """Embedded services (when needed) plus API, worker, Beat (and Flower) children."""

    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    flower: bool = False
    concurrency: int = 2
    quiet: bool = False
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    _services: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Stack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self.env = {**os.environ, **self._service_urls(), **self._credentials()}
        self._say(f"database {self.env['DUSTPAN_DATABASE_URL']}\nbroker   {self.env['DUSTPAN_BROKER_URL']}")
        self._run(["migrate"])
        dustpan = [sys.executable, "-m", "workers.cli"]
        self.children = [
            Child("api", [*dustpan, "api", "--host", self.host, "--port", str(self.port)]),
            Child("worker", [*dustpan, "worker", "--concurrency", str(self.concurrency)]),
            Child("beat", [*dustpan, "beat"]),
        ]
        if self.flower:
            self.children.append(Child("flower", [*dustpan, "flower"]))
            self._say(f"flower   http://127.0.0.1:5555  (user and password in {self.data_dir / SECRETS_FILE})")
        for child in self.children:
            child.start(self.env, self.data_dir / "logs")
        self._say(f"api      {self.api_url}  (logs in {self.data_dir / 'logs'})")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._say("stopping...")
        for child in reversed(self.children):
            child.stop()
        if self._services:
            (self.data_dir / SERVICES_FILE).unlink(missing_ok=True)
        for service in reversed(self._services):
            service.stop()

    @property
    def restarts(self) -> int:
        return sum(child.restarts for child in self.children)

    def keep_alive(self) -> None:
        """Restart a child that died (after a short pause, so a crash loop does not spin)."""
        for child in self.children:
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                continue
            if time.monotonic() - child.started_at < 2:
                time.sleep(2)
            child.restarts += 1
            self._say(f"{child.name} exited with {code}; restarting (restart {child.restarts})")
            child.start(self.env, self.data_dir / "logs")

    def wait_until_healthy(self, timeout: float = 60.0) -> None:  # float-ok: seconds
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.keep_alive()
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"dustpan: the API did not become healthy in {timeout:.0f} s; see {self.data_dir / 'logs'}")

    def _service_urls(self) -> dict[str, str]:
        database_url, broker_url = self.settings.database_url, self.settings.broker_url
        if not (database_url and broker_url):
            from workers.embedded import EmbeddedPostgres, EmbeddedRedis

            self._say(f"starting embedded PostgreSQL and Redis under {self.data_dir}")
            if not database_url:
                postgres = EmbeddedPostgres(self.data_dir)
                postgres.start()
                self._services.append(postgres)
                database_url = postgres.url
            if not broker_url:
                redis_server = EmbeddedRedis(self.data_dir)
                redis_server.start()
                self._services.append(redis_server)
                broker_url = redis_server.url
            (self.data_dir / SERVICES_FILE).write_text(
                json.dumps({"database_url": database_url, "broker_url": broker_url})
            )
        return {"DUSTPAN_DATABASE_URL": str(database_url), "DUSTPAN_BROKER_URL": str(broker_url)}

    def _credentials(self) -> dict[str, str]:
        """Generated once per data dir when unset, so a local stack is never open by default."""
        path = self.data_dir / SECRETS_FILE
        stored = json.loads(path.read_text()) if path.exists() else {}
        generated = {
            "webhook_secret": secrets.token_hex(32),
            "api_token": secrets.token_urlsafe(32),
            "flower_user": "dustpan",
            "flower_password": secrets.token_urlsafe(24),
        }
        if set(generated) - set(stored):  # first run, or a data dir from before Flower had a password
            stored = {**generated, **stored}
            path.write_text(json.dumps(stored))
            path.chmod(0o600)
        return {
            "DUSTPAN_WEBHOOK_SECRET": ",".join(self.settings.webhook_secret) or stored["webhook_secret"],
            "DUSTPAN_API_TOKEN": self.settings.api_token or stored["api_token"],
            "DUSTPAN_FLOWER_USER": self.settings.flower_user or stored["flower_user"],
            "DUSTPAN_FLOWER_PASSWORD": (
                self.settings.flower_password.get_secret_value()
                if self.settings.flower_password
                else stored["flower_password"]
            ),
        }

    def _run(self, command: list[str]) -> None:
        subprocess.run([sys.executable, "-m", "workers.cli", *command], env=self.env, check=True)

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)


def run_up(settings: Settings, host: str, port: int, flower: bool) -> None:
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with Stack(settings, host=host, port=port, flower=flower) as stack:
        stack.wait_until_healthy()
        print("dustpan is up; Ctrl-C stops it.", flush=True)
        with StatusDisplay(stack) as status:
            while not stop:
                stack.keep_alive()
                status.refresh()
                time.sleep(0.5)


class StatusDisplay(AbstractContextManager["StatusDisplay"]):
    """The status line: redrawn in place every 2 s on a terminal, printed every 10 s into a pipe or log."""

    def __init__(self, stack: Stack) -> None:
        from rich.console import Console

        from workers.up_status import StatusReader

        self.stack = stack
        env = stack.env
        self.reader = StatusReader(
            env["DUSTPAN_DATABASE_URL"], env["DUSTPAN_BROKER_URL"], stack.settings.accumulation.threshold
        )
        self.console = Console()
        self.every = STATUS_EVERY_TERMINAL_SECONDS if self.console.is_terminal else STATUS_EVERY_PIPE_SECONDS
        self.live: Live | None = None
        self._due = time.monotonic()

    def __enter__(self) -> StatusDisplay:
        if self.console.is_terminal:
            from rich.live import Live

            # redirect_stdout: the supervisor's own messages (a restart) print above the line.
            self.live = Live(console=self.console, auto_refresh=False, transient=True, redirect_stdout=True)
            self.live.start()
        return self

    def refresh(self) -> None:
        if time.monotonic() < self._due:
            return
        line = self.reader.line(self.every, self.stack.restarts)
        self._due = time.monotonic() + self.every
        if self.live is not None:
            from rich.text import Text

            self.live.update(Text(line), refresh=True)
        else:
            print(line, flush=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live is not None:
            self.live.stop()
        self.reader.close()
