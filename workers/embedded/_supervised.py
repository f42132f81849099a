"""The shared supervisor: one owner per data directory, orphan clean-up, ports and processes.

See the package docstring for why each of these rules exists.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any, ClassVar

import psutil

from workers.up_lifecycle import die_with_parent

HOST = "127.0.0.1"
# Never picked automatically: the machine's own PostgreSQL and Redis may listen there.
RESERVED_PORTS = frozenset({5432, 6379})
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
PORT_ATTEMPTS = 3


class EmbeddedServiceError(RuntimeError):
    pass


class _Supervised(ABC):
    """A server process we start, watch and stop; subclasses say how to run and ping it."""

    name: ClassVar[str]
    home_name: ClassVar[str]  # the server's directory under data_dir
    pid_file_name: ClassVar[str]  # written by the server into its home
    stop_signal: ClassVar[signal.Signals]
    crash_signal: ClassVar[signal.Signals] = signal.SIGKILL

    def __init__(self, data_dir: Path, port: int | None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None
        self._owner_pid = os.getpid()
        # `dustpan up` sets it: the server then stops when its owner dies, even by SIGKILL.
        self.die_with_owner = False
        self.replaced_orphan: int | None = None

    @abstractmethod
    def _prepare(self) -> None: ...

    @abstractmethod
    def _command(self) -> list[str]: ...

    @abstractmethod
    def _ping(self) -> bool: ...

    def _popen_user(self) -> dict[str, Any]:
        return {}

    @property
    def home(self) -> Path:
        return self.data_dir / self.home_name

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self.running else None

    def start(self) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self.replaced_orphan = _stop_orphan(self.home, self.home / self.pid_file_name, self.stop_signal)
            self._prepare()
            self._launch()
            self._owner_pid = os.getpid()
            _RUNNING.add(self)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Orderly shutdown; SIGKILL if the server has not exited within timeout seconds."""
        self._halt(self.stop_signal, timeout)
        self._release_lock()

    def kill(self) -> None:
        """SIGKILL the server as a crash would; the data stays as the crash left it."""
        if self._process is not None:
            children = _children(self._process.pid)
            self._process.kill()
            self._process.wait()
            # A crashed server's workers exit by themselves; waiting for them lets the next
            # start() find the shared memory free instead of refusing to run.
            for straggler in _wait_gone(children, timeout=5):
                straggler.kill()
        self._halt(signal.SIGKILL, 0)

    def restart(self, immediate: bool = False) -> None:
        """Stop and start again on the same port; immediate skips the orderly shutdown."""
        self._halt(self.crash_signal if immediate else self.stop_signal, STOP_TIMEOUT)
        self.start()

    def _halt(self, sig: signal.Signals, timeout: float) -> None:
        if self._process is not None:
            _end_child(self._process, sig, timeout)
        self._process = None
        _RUNNING.discard(self)

    def _launch(self) -> None:
        for _ in range(PORT_ATTEMPTS):
            self.port = _usable_port(self.port)
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    start_new_session=True,
                    preexec_fn=die_with_parent(self.stop_signal) if self.die_with_owner else None,
                    **self._popen_user(),
                )
            if self._wait_ready(log_start):
                return
            # Someone took the port between our probe and the server's bind: pick another.
            self.port = None
        raise EmbeddedServiceError(f"{self.name}: no free port after {PORT_ATTEMPTS} attempts")

    def _wait_ready(self, log_start: int) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = self._log_since(log_start)
                if "Address already in use" in log:
                    return False
                code = self._process.returncode
                raise EmbeddedServiceError(f"{self.name} exited with {code} while starting; log:\n{log}")
            if self._ping():
                return True
            time.sleep(0.1)
        self._halt(signal.SIGKILL, 0)
        raise EmbeddedServiceError(
            f"{self.name} did not accept connections on {HOST}:{self.port} within {READY_TIMEOUT:.0f} s;"
            f" log:\n{self._log_since(log_start)}"
        )

    def _log_since(self, offset: int, limit: int = 4000) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")[-limit:]

    def _acquire_lock(self) -> None:
        if self._lock is not None:
            return
        handle = (self.data_dir / f"{self.name}.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise EmbeddedServiceError(f"{self.name} in {self.data_dir} is owned by process {owner}") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


_RUNNING: set[_Supervised] = set()


@atexit.register
def _stop_forgotten_servers() -> None:
    for service in list(_RUNNING):
        if service._owner_pid == os.getpid():  # a forked child inherits the set, not the servers
            service.stop()


def _usable_port(wanted: int | None) -> int:
    if wanted is not None and _port_is_free(wanted):
        return wanted
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers themselves do, so that TIME_WAIT leftovers do not count as busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def _end_child(process: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _stop_orphan(home: Path, pid_file: Path, sig: signal.Signals) -> int | None:
    """Stop a server that a dead owner left running in home; leave any other process alone.

    Returns the pid of the server it stopped, if any."""
    try:
        process = psutil.Process(int(pid_file.read_text().split()[0]))
        if Path(process.cwd()).resolve() != home.resolve():
            return None
        process.send_signal(sig)
    except (OSError, ValueError, IndexError, psutil.Error):
        return None  # no pid file, a dead pid or a process that is not ours
    if _wait_gone([process], STOP_TIMEOUT):
        process.kill()
        _wait_gone([process], 5)
    return process.pid


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of processes still alive after at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        processes = [process for process in processes if _is_alive(process)]
        if not processes or time.monotonic() >= deadline:
            return processes
        time.sleep(0.05)


def _is_alive(process: psutil.Process) -> bool:
    try:
        # Zombies count as gone: not every container's PID 1 reaps orphans.
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
