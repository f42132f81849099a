"""Group commit: the items that arrive while a batch is written share the next batch.

A one-trade webhook costs the API a thread trip and a database round trip that waits for
the WAL to reach the disk, about as much as everything else it does together. ``GroupCommit``
writes one batch at a time on its own thread; every item submitted meanwhile waits, and the
next batch takes them all. No timer holds anything back: an item that finds the thread idle
is written at once, alone, and batches grow only as fast as items arrive during a write. Each
caller gets its own result, once the batch call that wrote its item has returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Coalesce concurrent ``submit`` calls into calls of ``write(items) -> results`` (same order).

    ``size`` weighs an item, and a batch holds at most ``max_size`` (or a single heavier item).
    ``pause_seconds`` waits that long after each batch before the next, for writes that may lag
    (tallies): the next batch then gathers whatever arrived meanwhile.
    When a batch call raises and ``isolate(error)`` says the error may be one item's doing
    rather than the batch's (not a database outage, say), each item is written again alone, so
    that one item's failure stays its own. Otherwise every caller of the batch gets the error.
    """

    def __init__(
        self,
        write: Callable[[list[Item]], Sequence[Result]],
        *,
        size: Callable[[Item], int] = lambda _: 1,
        max_size: int = 1000,
        isolate: Callable[[BaseException], bool] = lambda _: True,
        pause_seconds: float = 0,  # float-ok: a duration
        name: str = "group-commit",
    ) -> None:
        self._write, self._size, self._max_size, self._isolate = write, size, max_size, isolate
        self._pause_seconds = pause_seconds
        self._waiting: list[tuple[Item, asyncio.Future[Result] | None]] = []
        self._running: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def submit(self, item: Item) -> Result:
        """Write the item with the next batch; its result once that batch is written."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._enqueue(item, future)
        # A caller that goes away (client disconnect) leaves its item in the batch: the result
        # is dropped, the write is not undone.
        return await future

    def post(self, item: Item) -> None:
        """Write the item with the next batch, without waiting (failures are logged)."""
        self._enqueue(item, None)

    def _enqueue(self, item: Item, future: asyncio.Future[Result] | None) -> None:
        self._waiting.append((item, future))
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await self._run_batch(self._take_batch())
                if self._pause_seconds:
                    await asyncio.sleep(self._pause_seconds)
        finally:
            self._running = None

    def _take_batch(self) -> list[tuple[Item, asyncio.Future[Result] | None]]:
        total, count = 0, 0
        for item, _ in self._waiting:
            total += self._size(item)
            if count and total > self._max_size:
                break
            count += 1
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        return batch

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future[Result] | None]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._thread, self._write, items)
        except asyncio.CancelledError:
            for _, future in batch:
                if future is not None:
                    future.cancel()
            raise
        except Exception as exc:
            if len(batch) > 1 and self._isolate(exc):
                log.warning("a batch of %d failed (%s: %s); writing each alone", len(batch), type(exc).__name__, exc)
                for one in batch:
                    await self._run_batch([one])
                return
            if all(future is None for _, future in batch):
                log.error("a batch of %d failed", len(batch), exc_info=exc)
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future is not None and not future.done():
                future.set_result(result)

    def close(self) -> None:
        """Wait for the batch being written; later items are not written."""
        self._thread.shutdown(wait=True)
