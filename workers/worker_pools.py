"""Two pools for one `dustpan worker` (SPEC 6 bulkheads).

With no ``--queues`` this process is the prefork node for ``ingestion`` and ``ops`` (CPU work:
accumulate runs, sweeps, dust jobs), and it keeps a second node alive beside it: a threads
pool on ``execution``. Broker calls wait on the network, so a thread costs little while it
waits, and a symbol whose orders hang ties up threads of that pool only, never the processes
that ingest and accumulate. The second node is this process's child: it dies with it (a parent
death signal), and it is started again within a second if it dies alone.

The work a node that died held is not left to the sweep's next tick: for a claim lease and a
bit after the death the keeper re-sends, twice a second, every in-flight execution whose claim
has lapsed, and at once every one nobody has claimed since before the death (the messages the
node had taken off the queue, prefetched or waiting out a retry's countdown, but not claimed):
``rescue``, each at most once. Before that, the keeper lets go of the dead node's claims
(``release``: the node is known dead, so its leases need not run out), so a kill in the middle
of a hanging call costs a rescue pass and a lookup, and a queued order a second. Every
execution node does the same when it starts (``rescue_after``): a whole worker, or compose's
``worker-execution``, killed and started again by its process manager leaves nothing to
``pending_stale_seconds`` (its claims, with no keeper left to release them, lapse with their
lease). A keeper starts that rescue
itself when it starts, before its child boots (seconds on a busy machine), so the orders a whole
worker held when it was killed go out as soon as its replacement reaches the database; its
child, told so (``--kept``), does not repeat it, nor after a death the keeper rescued.

A node started cold spends over a second of CPU importing Celery, SQLAlchemy and dustpan before
it takes a message (8 s measured on a saturated 2-core machine, while the surviving node carried
every order). So the keeper keeps a standby beside it (``STANDBY_ENV``): started a few seconds
after the node, once the machine is calm (``calm``: its imports would compete with the work),
it imports everything a node needs and waits on a pipe. When the node dies, the standby is
told to go on: it only has to connect and start its threads, and the keeper starts
the next standby. The standby takes nothing off a queue until then; it costs the memory of one
idle process. A standby that died is not used (a cold start instead). ``ps`` shows the two with
the same command line; the standby is the younger (``execution_node``).

A rescue thread lives in the process that forks the prefork pool's children (a child that dies
or reaches its task limit is replaced by a fork): a fork waits until no pass is under way, so
that no child inherits a lock a pass held (``workers.fork_guard``, as ``workers.worker_sweep``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psutil

from workers.fork_guard import ForkGuard

log = logging.getLogger(__name__)
FAST_QUEUES = "ingestion,ops"
IO_QUEUES = "execution"
IO_POOL_KEPT = "--kept"  # the worker option a keeper gives its child: the keeper does the rescues
# ...and in the environment of its standby: import, then wait for GO on stdin. Not an option:
# the command line of a standby that took over would still say so. Outside DUSTPAN_ (settings).
STANDBY_ENV = "_DUSTPAN_IO_STANDBY"
GO = b"go\n"
# The standby starts this long after its node (their imports would compete for the CPU).
STANDBY_AFTER_SECONDS = 3
# A node that dies within this long of its start waits RESTART_DELAY_SECONDS before the next
# (a crash loop must not spin); one that ran longer is started again at once: its orders wait
# for the surviving nodes meanwhile, and a start costs seconds on a loaded machine.
STEADY_AFTER_SECONDS = 10
RESTART_DELAY_SECONDS = 1
RESCUE_EVERY_SECONDS = 0.5  # float-ok: a duration
_PR_SET_PDEATHSIG = 1


def pool_for(queues: str, pool: str) -> str:
    """``auto``: threads for a node that only sends orders, prefork for everything else."""
    if pool != "auto":
        return pool
    return "threads" if queues == IO_QUEUES else "prefork"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Not Linux: no parent death signal, but the keeper still stops it on a clean shutdown.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def restart_delay(ran_seconds: float) -> int:  # float-ok: a duration
    """Seconds before a dead execution node is started again, given how long it ran."""
    return 0 if ran_seconds >= STEADY_AFTER_SECONDS else RESTART_DELAY_SECONDS


def calm(below_load_percent: int) -> bool:
    """The 1-minute load average is below ``below_load_percent`` of the CPU count."""
    return os.getloadavg()[0] * 100 < below_load_percent * (os.cpu_count() or 1)


def execution_node(children: list[psutil.Process]) -> psutil.Process | None:
    """Of a worker's child processes, its execution node at work: the standby, when there is
    one, has the same command line, and is younger (started after the node it stands by for)."""
    nodes = []
    for child in children:
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            if IO_QUEUES in child.cmdline():
                nodes.append((child.create_time(), child))
    return min(nodes, key=lambda node: node[0])[1] if nodes else None


def node_claimant(node: str, pid: int) -> str:
    """Who the claims of the node started with ``--name node`` as process ``pid`` are by: its
    name as its tasks see it (``-n`` read as Celery's worker command reads it), and the pid."""
    from celery.utils.nodenames import default_nodename, host_format

    from tasks.execution import claimant

    return claimant(host_format(default_nodename(node)), pid)


class IoPoolKeeper:
    """Runs the execution pool's node as a child and starts it again when it dies."""

    def __init__(
        self,
        node: str,
        concurrency: int,
        rescue: Callable[[set[object], datetime], int] | None = None,
        rescue_seconds: float = 5,  # float-ok: a duration: a claim lease and a bit more
        release: Callable[[str], int] | None = None,
        standby_below_load_percent: int = 100,
    ) -> None:
        """``rescue(already, died_at)`` re-sends the executions whose claims lapsed and those
        unclaimed since ``died_at`` (the ids in ``already`` excepted, and added to it); it runs
        for ``rescue_seconds`` after a death and after the first start. ``release(claimant)``
        lets go of the claims of a node that died (``tasks.execution.claimant``: its node name
        and pid), before that rescue, so its first pass re-sends them instead of waiting a lease.
        The standby is started once the 1-minute load average is below
        ``standby_below_load_percent`` of the CPU count (0: never)."""
        self.command = [
            sys.executable, "-m", "workers.cli", "worker",
            "--queues", IO_QUEUES, "--pool", "threads", "--concurrency", str(concurrency), "--name", node,
            IO_POOL_KEPT,
        ]  # fmt: skip
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._standby: subprocess.Popen[bytes] | None = None
        self._spawning = threading.Lock()  # a child is not started once stop() has begun
        self._thread = threading.Thread(target=self._keep, name="io-pool-keeper", daemon=True)
        self._rescue, self._rescue_seconds = rescue, rescue_seconds
        self._node, self._release = node, release
        self.calm = lambda: calm(standby_below_load_percent)

    def start(self) -> None:
        self._start_rescue()  # what the node before this worker's may have held
        self._thread.start()

    def _keep(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._spawning:  # stop() sees every child started
                if self._stopping.is_set():
                    return
                process = self._process = self._promote() or self._spawn(self.command)
            self._stand_by(process)
            code = process.wait()
            if self._stopping.is_set():
                return
            delay = restart_delay(time.monotonic() - started)
            log.warning("execution pool exited (status %s); starting it again in %d s", code, delay)
            self._release_claims(self._process.pid)
            self._start_rescue()
            self._stopping.wait(delay)

    def _stand_by(self, process: subprocess.Popen[bytes]) -> None:
        """Start the standby of ``process`` once its start is over and the machine is calm."""
        while not self._stopping.is_set():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STANDBY_AFTER_SECONDS)  # the node's start first, then the standby's
            if process.poll() is not None:
                return
            if self.calm():
                with self._spawning:
                    if not self._stopping.is_set():
                        self._standby = self._spawn(self.command, standby=True)
                return

    @staticmethod
    def _spawn(command: list[str], standby: bool = False) -> subprocess.Popen[bytes]:
        if not standby:
            return subprocess.Popen(command, preexec_fn=_die_with_parent)
        environment = {**os.environ, STANDBY_ENV: "1"}
        return subprocess.Popen(command, stdin=subprocess.PIPE, env=environment, preexec_fn=_die_with_parent)

    def _promote(self) -> subprocess.Popen[bytes] | None:
        """The standby, told to go on; None if there is none alive (then a cold start)."""
        standby, self._standby = self._standby, None
        if standby is None or standby.stdin is None:
            return None
        try:
            if standby.poll() is not None:
                raise OSError(f"it exited (status {standby.returncode})")
            standby.stdin.write(GO)
            standby.stdin.close()
        except OSError as exc:
            log.warning("the execution pool's standby cannot take over (%s); starting a new node", exc)
            _end(standby)
            return None
        log.info("the execution pool's standby (pid %d) takes over", standby.pid)
        return standby

    def _release_claims(self, pid: int) -> None:
        if self._release is None:
            return
        try:
            released = self._release(node_claimant(self._node, pid))
        except Exception as exc:  # the database away: the claims lapse with their lease instead
            log.warning("claims of the dead execution pool not released (they lapse with their lease): %s", exc)
            return
        if released:
            log.info("released %d claim(s) of the dead execution pool; their orders are looked up again", released)

    def _start_rescue(self) -> None:
        if self._rescue is not None:
            start_rescue(self._rescue, self._rescue_seconds, self._stopping)

    def stop(self) -> None:
        with self._spawning:
            self._stopping.set()
        standby = self._standby
        if standby is not None:
            _end(standby, 5)  # it holds no task
        process = self._process
        if process is not None:
            _end(process, 20)  # Celery's warm shutdown: tasks under way finish, the rest go back


def _end(process: subprocess.Popen[bytes], grace: float = 0) -> None:  # float-ok: a duration
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaped either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_rescue(
    rescue: Callable[[set[object], datetime], int],
    seconds: float,  # float-ok: a duration
    stopping: threading.Event,
) -> None:
    """From now on, for ``seconds``, re-send twice a second what a dead execution node may have
    held (``rescue(already, died_at)``, each execution at most once), in a thread of its own."""
    died_at = datetime.now(UTC)
    threading.Thread(
        target=_rescue_after, args=(rescue, died_at, seconds, stopping), name="io-pool-rescue", daemon=True
    ).start()


def _rescue_after(
    rescue: Callable[[set[object], datetime], int],
    died_at: datetime,
    seconds: float,  # float-ok: a duration
    stopping: threading.Event,
) -> None:
    already: set[object] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with _PASSING:
            if not _rescue_pass(rescue, already, died_at):
                return
        if stopping.wait(RESCUE_EVERY_SECONDS):
            return


def _rescue_pass(rescue: Callable[[set[object], datetime], int], already: set[object], died_at: datetime) -> bool:
    try:
        sent = rescue(already, died_at)
    except Exception as exc:  # the database or Redis away: the sweep finds it later
        log.warning("re-sending the dead execution pool's work failed: %s", exc)
        return False
    if sent:
        log.info("re-sent %d execution(s) a dead execution pool may have held", sent)
    return True


_PASSING = ForkGuard()  # held during a rescue pass; a fork waits for it
_PASSING.register()
