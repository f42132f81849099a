"""The keeper of a worker's execution node starts it again when it dies (workers/worker_pools.py):
at once after a node that had been running, after a pause when it dies right after its start."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from workers import worker_pools
from workers.worker_pools import IoPoolKeeper, node_claimant, restart_delay


def test_a_node_that_ran_is_started_again_at_once_and_a_crash_loop_pauses() -> None:
    assert restart_delay(worker_pools.STEADY_AFTER_SECONDS) == 0
    assert restart_delay(3600) == 0
    assert restart_delay(0) == worker_pools.RESTART_DELAY_SECONDS
    assert restart_delay(worker_pools.STEADY_AFTER_SECONDS - 0.5) == worker_pools.RESTART_DELAY_SECONDS


@pytest.mark.parametrize(("steady_after", "said"), [(0, "again in 0 s"), (3600, "again in 1 s")])
def test_the_keeper_starts_a_dead_node_again_and_says_when(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, steady_after: int, said: str
) -> None:
    starts = tmp_path / "starts"
    monkeypatch.setattr(worker_pools, "STEADY_AFTER_SECONDS", steady_after)
    keeper = IoPoolKeeper("io-test", 2)  # no rescue: only the restarts are under test
    # Each start leaves a line and dies at once, as a node killed right after its start would.
    keeper.command = [sys.executable, "-c", f"open({str(starts)!r}, 'a').write('x\\n'); raise SystemExit(3)"]
    caplog.set_level(logging.WARNING, logger="workers.worker_pools")
    keeper.start()
    try:
        deadline = time.monotonic() + 60
        while (len(starts.read_text().splitlines()) if starts.exists() else 0) < 2:
            assert time.monotonic() < deadline, "the dead node was not started again"
            time.sleep(0.05)
    finally:
        keeper.stop()
    assert any(said in record.getMessage() and "status 3" in record.getMessage() for record in caplog.records)


def test_the_keeper_releases_the_claims_of_the_node_that_died_before_it_starts_another(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    released: list[str] = []
    keeper = IoPoolKeeper("io-test@host", 2, release=lambda claimant: released.append(claimant) or 1)
    # Each start writes its pid and dies at once.
    keeper.command = [sys.executable, "-c", f"import os; open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')"]
    keeper.start()
    try:
        deadline = time.monotonic() + 60
        while len(pids.read_text().splitlines() if pids.exists() else []) < 2:
            assert time.monotonic() < deadline, "the dead node was not started again"
            time.sleep(0.05)
    finally:
        keeper.stop()
    first, second = pids.read_text().splitlines()[:2]
    # The first node's claims were released before the second started, by the name its tasks
    # claim under (Celery's node name and the pid: tasks.execution.claimant).
    assert released[0] == f"io-test@host:{first}" and f"io-test@host:{second}" not in released[:1]


def test_a_node_claims_under_its_celery_node_name_and_pid() -> None:
    assert node_claimant("io-worker-7@box", 42) == "io-worker-7@box:42"
    assert node_claimant("io-worker1", 42) == "celery@io-worker1:42"  # Celery reads a bare name as the host


NODE = """
import os, sys, time
log = open({log!r}, "a", buffering=1)
if os.environ.get({env!r}):
    log.write(f"standby {{os.getpid()}}\\n")
    if sys.stdin.buffer.readline() != {go!r}:
        raise SystemExit(0)
log.write(f"node {{os.getpid()}}\\n")
time.sleep(120)
"""


def _lines(log: Path, kind: str, at_least: int) -> list[int]:
    deadline = time.monotonic() + 60
    while True:
        pids = [
            int(line.split()[1])
            for line in (log.read_text() if log.exists() else "").splitlines()
            if line.startswith(kind)
        ]
        if len(pids) >= at_least:
            return pids
        assert time.monotonic() < deadline, (
            f"never {at_least} {kind} line(s): {log.read_text() if log.exists() else ''}"
        )
        time.sleep(0.02)


def _dead(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("standby_dies_first", [False, True], ids=["standby-takes-over", "standby-dead-cold-start"])
def test_a_standby_takes_over_when_the_node_dies_and_another_stands_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standby_dies_first: bool
) -> None:
    import os
    import signal

    log = tmp_path / "log"
    monkeypatch.setattr(worker_pools, "STANDBY_AFTER_SECONDS", 0.1)
    keeper = IoPoolKeeper("io-test", 2)
    keeper.command = [sys.executable, "-c", NODE.format(log=str(log), env=worker_pools.STANDBY_ENV, go=worker_pools.GO)]
    keeper.calm = lambda: True  # whatever this machine's load
    keeper.start()
    try:
        [node] = _lines(log, "node", 1)
        [standby] = _lines(log, "standby", 1)  # started after the node, waiting
        assert not _dead(standby) and _lines(log, "node", 1) == [node]  # it takes no work meanwhile
        if standby_dies_first:
            os.kill(standby, signal.SIGKILL)
            time.sleep(0.2)
        os.kill(node, signal.SIGKILL)
        nodes = _lines(log, "node", 2)
        if standby_dies_first:
            assert nodes[1] != standby  # a cold start: the dead standby is not used
        else:
            assert nodes[1] == standby  # the standby went on, with no new start
        assert len(_lines(log, "standby", 2)) >= 2  # and the keeper started the next standby
        children = [*nodes, *_lines(log, "standby", 2)]
    finally:
        keeper.stop()
    assert all(_dead(pid) for pid in children), "stop() left a node or a standby running"


def test_no_standby_is_started_while_the_machine_is_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log"
    monkeypatch.setattr(worker_pools, "STANDBY_AFTER_SECONDS", 0.05)
    keeper = IoPoolKeeper("io-test", 2)
    keeper.command = [sys.executable, "-c", NODE.format(log=str(log), env=worker_pools.STANDBY_ENV, go=worker_pools.GO)]
    asked: list[bool] = []
    keeper.calm = lambda: asked.append(False) or False
    keeper.start()
    try:
        _lines(log, "node", 1)
        deadline = time.monotonic() + 30
        while len(asked) < 5:  # asked again and again while the node runs
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert "standby" not in log.read_text()
    finally:
        keeper.stop()


def test_the_machine_is_calm_below_the_load_given() -> None:
    assert not worker_pools.calm(0)  # 0: never a standby
    assert worker_pools.calm(100_000)  # a load average of 1000 per CPU is not this machine's
