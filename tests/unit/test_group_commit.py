"""GroupCommit: items submitted while a batch is written share the next batch, each caller gets its own result."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from workers.group_commit import GroupCommit


class Recorder:
    """A write function that records its batches and can be held until released."""

    def __init__(self, fail_on: Callable[[list[str]], Exception | None] = lambda _: None) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_on = fail_on

    def __call__(self, items: list[str]) -> list[str]:
        self.release.wait(5)
        self.batches.append(list(items))
        failure = self.fail_on(items)
        if failure is not None:
            raise failure
        return [item.upper() for item in items]


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


def test_items_submitted_during_a_write_share_the_next_batch_and_each_gets_its_own_result() -> None:
    async def scenario() -> tuple[list[str], list[list[str]]]:
        recorder = Recorder()
        recorder.release.clear()  # the first batch is held in the writer thread
        group = GroupCommit(recorder, name="test")
        first = asyncio.create_task(group.submit("a"))
        await asyncio.sleep(0.05)  # "a" alone is being written
        rest = [asyncio.create_task(group.submit(item)) for item in ("b", "c", "d")]
        await asyncio.sleep(0.05)
        recorder.release.set()
        results = [await first, *[await task for task in rest]]
        group.close()
        return results, recorder.batches

    results, batches = asyncio.run(scenario())
    assert results == ["A", "B", "C", "D"]
    assert batches == [["a"], ["b", "c", "d"]]


def test_a_batch_holds_at_most_max_size_or_one_heavier_item() -> None:
    async def scenario() -> list[list[str]]:
        recorder = Recorder()
        recorder.release.clear()
        group = GroupCommit(recorder, size=len, max_size=4, name="test")
        tasks = [asyncio.create_task(group.submit(item)) for item in ("x", "aa", "bb", "c", "dddddd", "e")]
        await asyncio.sleep(0.05)
        recorder.release.set()
        await asyncio.gather(*tasks)
        group.close()
        return recorder.batches

    # Sizes 1+2 | 2+1 | 6 (heavier than the cap: alone) | 1, in the order submitted.
    assert asyncio.run(scenario()) == [["x", "aa"], ["bb", "c"], ["dddddd"], ["e"]]


def test_an_isolated_failure_is_retried_alone_so_only_its_own_caller_gets_the_error() -> None:
    def bad_apple(items: list[str]) -> Exception | None:
        return ValueError("bad apple") if "bad" in items else None

    async def scenario() -> tuple[list[object], list[list[str]]]:
        recorder = Recorder(fail_on=bad_apple)
        recorder.release.clear()
        group = GroupCommit(recorder, isolate=lambda error: isinstance(error, ValueError), name="test")
        held = asyncio.create_task(group.submit("first"))
        await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(group.submit(item)) for item in ("ok1", "bad", "ok2")]
        await asyncio.sleep(0.05)
        recorder.release.set()
        await held
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        group.close()
        return outcomes, recorder.batches

    outcomes, batches = asyncio.run(scenario())
    assert outcomes[0] == "OK1" and outcomes[2] == "OK2"
    assert isinstance(outcomes[1], ValueError)
    assert batches == [["first"], ["ok1", "bad", "ok2"], ["ok1"], ["bad"], ["ok2"]]


def test_a_failure_that_is_not_isolated_reaches_every_caller_of_the_batch_once() -> None:
    async def scenario() -> tuple[list[object], list[list[str]]]:
        recorder = Recorder(fail_on=lambda items: ConnectionError("database down") if len(items) > 1 else None)
        recorder.release.clear()
        group = GroupCommit(recorder, isolate=lambda error: not isinstance(error, ConnectionError), name="test")
        held = asyncio.create_task(group.submit("first"))
        await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(group.submit(item)) for item in ("a", "b")]
        await asyncio.sleep(0.05)
        recorder.release.set()
        await held
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        group.close()
        return outcomes, recorder.batches

    outcomes, batches = asyncio.run(scenario())
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert batches == [["first"], ["a", "b"]]  # not written again one by one


def test_posted_items_are_written_without_a_caller_and_a_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[list[str]]:
        recorder = Recorder(fail_on=lambda items: RuntimeError("redis down") if "boom" in items else None)
        group = GroupCommit(recorder, isolate=lambda _: False, name="test")
        for n, item in enumerate(("one", "boom", "two"), start=1):
            group.post(item)
            await until(lambda n=n: len(recorder.batches) == n)
        await asyncio.sleep(0.05)
        group.close()
        return recorder.batches

    assert asyncio.run(scenario()) == [["one"], ["boom"], ["two"]]
    assert "a batch of 1 failed" in caplog.text


def test_a_pause_after_each_batch_lets_the_next_one_gather_everything_posted_meanwhile() -> None:
    async def scenario() -> list[list[str]]:
        recorder = Recorder()
        group = GroupCommit(recorder, pause_seconds=0.3, name="test")
        group.post("first")  # written at once, then the pause
        await until(lambda: len(recorder.batches) == 1)
        for item in ("a", "b", "c"):
            group.post(item)
            await asyncio.sleep(0.01)
        await until(lambda: len(recorder.batches) == 2)
        group.close()
        return recorder.batches

    assert asyncio.run(scenario()) == [["first"], ["a", "b", "c"]]
