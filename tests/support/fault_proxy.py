"""A TCP fault proxy for chaos tests: latency, jitter and connection resets between dustpan and Redis/PostgreSQL.

It runs its own asyncio loop in a daemon thread, so a synchronous test drives it directly:

    with FaultProxy.for_url(broker_url) as proxy:
        client = redis.Redis.from_url(proxy.url_for(broker_url))  # or give proxy.url_for(...) to a worker
        proxy.latency_seconds = 0.05  # added to every chunk, each direction, bytes stay in order
        proxy.jitter_seconds = 0.02  # uniform extra per chunk
        proxy.reset_probability = 0.01  # per forwarded chunk: RST both sides of that connection
        proxy.refuse = True  # new connections are accepted then reset: the service looks down
        proxy.reset_all()  # RST every live connection now (returns once their sockets are closed)
        print(proxy.counts())

The knobs are plain attributes, read per chunk or per connection, so any thread may change them at
any time. A reset is a real RST (SO_LINGER 0 then abort), which clients report as "connection reset"
rather than a clean close. stop() closes the listener and every connection and joins the thread.
Floats here are seconds and probabilities, never money.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import socket
import struct
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

CHUNK = 64 * 1024
RESETS = ("resets_random", "resets_reset_all", "resets_refused")  # injected resets, by cause
COUNTERS = ("connections", *RESETS, "upstream_failures", "bytes_up", "bytes_down")
Chunks = asyncio.Queue[tuple[float, bytes]]  # (loop time when due, chunk); b"" is the end of the stream


def _rst(writer: asyncio.StreamWriter) -> None:
    """Abort with SO_LINGER 0 so the peer receives an RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        with contextlib.suppress(OSError):  # already gone: abort() alone is all there is left to do
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: both writers and its four tasks (a reader and a sender each way)."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.tasks: list[asyncio.Task[None]] = []
        self.broken = False

    def reset(self) -> bool:
        """RST both sides and stop the tasks; False if this link was already reset."""
        if self.broken:
            return False
        self.broken = True
        for writer in self.writers:
            _rst(writer)
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        return True


class FaultProxy:
    listen_host = "127.0.0.1"

    def __init__(
        self, upstream_host: str, upstream_port: int, *, listen_port: int = 0, seed: int | None = None
    ) -> None:
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.listen_port = listen_port
        self.latency_seconds = 0.0  # float-ok: seconds
        self.jitter_seconds = 0.0  # float-ok: seconds
        self.reset_probability = 0.0  # float-ok: a probability
        self.refuse = False
        self._random = random.Random(seed)
        self._counts_lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # the loop holds tasks only weakly
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_url(cls, url: str, *, listen_port: int = 0, seed: int | None = None) -> FaultProxy:
        """A proxy in front of the host:port of a redis:// or postgresql:// URL."""
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"{url!r} names no host:port to proxy")
        return cls(parts.hostname, parts.port, listen_port=listen_port, seed=seed)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fault proxy has not been started")
        return self._port

    def url_for(self, url: str) -> str:
        """url with its host:port replaced by the proxy's (user, password, path and query kept)."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{self.listen_host}:{self.port}"))

    def counts(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self._counts, open_connections=len(self._links))

    def _add(self, name: str, amount: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += amount

    def start(self) -> FaultProxy:
        if self._loop is not None:
            raise RuntimeError("a fault proxy starts once")
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._loop = loop = asyncio.new_event_loop()
        name = f"fault-proxy-{self.upstream_port}"
        self._thread = threading.Thread(
            target=loop.run_until_complete, args=(self._run(started),), name=name, daemon=True
        )
        self._thread.start()
        try:
            self._port = started.result(timeout=10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then join the thread. Safe to call twice."""
        if self._loop is None or self._thread is None or self._loop.is_closed():
            return
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._loop.close()

    def reset_all(self) -> int:
        """RST every live connection; returns how many. Their sockets are closed when this returns."""
        if self._loop is None:
            raise RuntimeError("the fault proxy has not been started")
        return asyncio.run_coroutine_threadsafe(self._reset_all(), self._loop).result(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def _reset_all(self) -> int:
        count = sum(link.reset() for link in list(self._links))
        self._add("resets_reset_all", count)
        await asyncio.sleep(0)  # the aborted transports close their sockets on the next loop pass
        return count

    async def _run(self, started: concurrent.futures.Future[int]) -> None:
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._accept, self.listen_host, self.listen_port)
        except BaseException as error:
            started.set_exception(error)
            return
        started.set_result(server.sockets[0].getsockname()[1])
        await self._stopping.wait()
        server.close()
        await asyncio.sleep(0)  # connections accepted just now reach _accept, so their sockets get closed below
        while others := asyncio.all_tasks() - {asyncio.current_task()}:  # handlers, pumps, half-done accepts
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        await asyncio.sleep(0)  # the aborted transports close their sockets before the loop closes

    def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        # a plain callback, so the handler task is ours to cancel (asyncio 3.11 logs cancelled handlers it made)
        self._add("connections")
        if self.refuse:
            self._add("resets_refused")
            _rst(client_writer)
            return
        handler = asyncio.get_running_loop().create_task(self._serve(client_reader, client_writer))
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        writers: tuple[asyncio.StreamWriter, ...] = (client_writer,)
        link: _Link | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            link = _Link(client_writer, upstream_writer)
            writers = link.writers
            self._links.add(link)
            for source, sink, way in ((client_reader, upstream_writer, "up"), (upstream_reader, client_writer, "down")):
                queue: Chunks = asyncio.Queue()
                link.tasks.append(asyncio.create_task(self._read(link, source, queue)))
                link.tasks.append(asyncio.create_task(self._send(link, queue, sink, f"bytes_{way}")))
            await asyncio.wait(link.tasks)
        except OSError:
            self._add("upstream_failures")
            _rst(client_writer)
        finally:  # no await in here: on stop, _run cancels this handler and gathers the pumps itself
            stopping = self._stopping is not None and self._stopping.is_set()
            for writer in writers:  # a no-op once reset; on stop, do not wait to flush to a peer
                (writer.transport.abort if stopping else writer.close)()
            if link is not None:
                self._links.discard(link)
                for task in link.tasks:
                    task.cancel()

    async def _read(self, link: _Link, source: asyncio.StreamReader, queue: Chunks) -> None:
        loop = asyncio.get_running_loop()
        due = 0.0  # float-ok: loop time; never earlier than the previous chunk's, so bytes stay in order
        try:
            while chunk := await source.read(CHUNK):
                if self._random.random() < self.reset_probability:
                    if link.reset():
                        self._add("resets_random")
                    return
                delay = self.latency_seconds + self._random.uniform(0, self.jitter_seconds)
                due = max(due, loop.time() + delay)
                queue.put_nowait((due, chunk))
            queue.put_nowait((due, b""))
        except OSError:
            link.reset()  # the peer reset us: pass it on to the other side

    async def _send(self, link: _Link, queue: Chunks, sink: asyncio.StreamWriter, counter: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    if sink.can_write_eof():
                        sink.write_eof()  # half-close, as the peer did; the other direction keeps going
                    return
                sink.write(chunk)
                self._add(counter, len(chunk))
                await sink.drain()
        except OSError:
            link.reset()
