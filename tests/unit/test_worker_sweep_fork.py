"""A pool child is never forked while the worker's sweep thread is mid-sweep (workers/worker_sweep.py).

A fork copies every lock as it is at that instant; a child forked while the sweep held one
(SQLAlchemy's mapper-configuration mutex did, in a restart test) waited on it forever.
"""

from __future__ import annotations

import os
import threading
import time
from decimal import Decimal

from workers.worker_sweep import WorkerSweep


class SlowSweep(WorkerSweep):
    def __init__(self) -> None:
        super().__init__(deps=None, every_seconds=Decimal("0.01"))  # type: ignore[arg-type]
        self.started, self.finished_at = threading.Event(), 0.0

    def sweep_once(self) -> bool:
        self.started.set()
        time.sleep(0.5)
        self.finished_at = time.monotonic()
        self.stop()
        return True


def test_a_fork_waits_for_the_sweep_under_way() -> None:
    sweep = SlowSweep()
    sweep.start()
    assert sweep.started.wait(10)
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # the child does nothing: only when it was forked matters
    forked_at = time.monotonic()
    os.waitpid(pid, 0)
    assert sweep.finished_at and forked_at >= sweep.finished_at, "forked in the middle of a sweep"
