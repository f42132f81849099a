"""A pool child is never forked in the middle of a dead execution node's rescue pass
(workers/worker_pools.py, through workers/fork_guard.py, as the worker sweep)."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime

from workers.worker_pools import start_rescue


def test_a_fork_waits_for_the_rescue_pass_under_way() -> None:
    started, finished_at = threading.Event(), [0.0]

    def slow_rescue(_already: set[object], _died_at: datetime) -> int:
        started.set()
        time.sleep(0.5)
        finished_at[0] = time.monotonic()
        return 0

    stopping = threading.Event()
    start_rescue(slow_rescue, 0.1, stopping)  # one pass: the window ends while it runs
    assert started.wait(10)
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # the child does nothing: only when it was forked matters
    forked_at = time.monotonic()
    os.waitpid(pid, 0)
    stopping.set()
    assert finished_at[0] and forked_at >= finished_at[0], "forked in the middle of a rescue pass"
