"""A guard around kombu's Redis channel, so a worker outlives a Redis restart (celery 5.7.0, kombu 5.7.0).

The crash: Redis dies while the worker main process has a BRPOP outstanding and messages
delivered but unacknowledged (acks_late). The event loop sees the dead socket, and the
consumer's recovery, ``on_connection_error_after_connected``, first ``collect()``s the
connection, which closes its channels. kombu's ``Channel.close`` starts by reading the
outstanding BRPOP reply; that read raises ConnectionError, which aborts the close half-way:
the channel is not marked closed and its unacknowledged messages are not given back.
``collect()`` swallows the error and detaches the transport (``transport.client = None``).
Celery 5.7.0 then also calls ``connection.close()`` on the same connection (5.6 did not),
which closes that half-closed channel again; this time the close gets as far as restoring
the unacknowledged messages, which needs a new Redis pool, whose parameters come from the
detached ``transport.client``: ``AttributeError: 'NoneType' object has no attribute
'hostname'``. That is no connection error, so it escapes ``ignore_errors`` and the worker
exits with "Unrecoverable error". Which socket the event loop reads first decides whether
it happens, so about every other Redis restart under load kills a worker.

The guard has two parts, both kept to the state they repair:

1. ``Channel.close`` treats a connection error while draining the outstanding BRPOP like an
   empty reply (the reply is lost with the connection either way) and finishes the close:
   the channel is marked closed while its transport is still attached, so the second close
   is a no-op. Its unacknowledged messages stay in Redis's unacked set and come back after
   the visibility timeout (celeryconfig), as with any lost connection; tasks still running
   are acknowledged as usual once Redis is back.
2. A channel asked for a new Redis pool after its transport was detached raises
   ``redis.ConnectionError`` instead of the AttributeError, so any other late use of such a
   channel is cleaned up as the connection error it is.

A third change is for speed, not safety: kombu's ``Channel.conn_or_acquire`` builds a new
``redis.Redis`` on every publish, event and ack (about 60 us each, most of it copying the
response-callback table), which was 8% of an execution node's CPU and 14% of a prefork node's.
The channel now keeps one client per connection pool and hands it out again: a ``redis.Redis``
takes a connection from its pool for each command and gives it back, so threads can share it
(redis-py's documented contract); a new pool (after a fork or a reconnect) gets a new client.

Installed on import, once; ``workers.celery_app`` imports it. Drop it once celery/kombu close
a channel completely when that read fails (the repro: tests/integration/test_worker_survives_redis_restart.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from queue import Empty
from typing import Any

import kombu
import redis
from kombu.transport import redis as kombu_redis

_GUARD = "_dustpan_guarded"
_CLIENT = "_dustpan_client"
# The kombu releases whose Redis channel this patch was read against and tested with.
TESTED_KOMBU = ((5, 7),)


def require_tested_kombu(version: str) -> None:
    """Refuse to start on a kombu whose internals this patch was not tested against: patching
    a channel that changed shape could lose messages more quietly than the crash it prevents."""
    release = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if release not in TESTED_KOMBU:
        tested = ", ".join(".".join(map(str, r)) + ".x" for r in TESTED_KOMBU)
        raise SystemExit(
            f"dustpan: kombu {version} is untested with workers/celery_patches.py (tested: {tested});"
            " install the versions in constraints.txt"
        )


def install() -> None:
    channel: Any = kombu_redis.Channel
    if getattr(channel, _GUARD, False):
        return
    close, connparams = channel.close, channel._connparams

    def close_even_if_the_brpop_reply_is_lost(self: Any) -> None:
        if self._in_poll and not self.closed:
            try:
                self._brpop_read()  # as close() does; this resets _in_poll, so close() won't read again
            except Empty:
                pass
            except self.connection_errors:
                pass  # the connection is gone: go on closing instead of leaving the channel half-closed
        close(self)

    def connparams_of_an_attached_transport(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("this kombu channel's connection is already closed")
        return connparams(self, asynchronous=asynchronous)

    @contextlib.contextmanager
    def conn_or_acquire_one_client(self: Any, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        shared = self.__dict__.get(_CLIENT)
        if shared is None or shared.connection_pool is not pool:
            shared = self._create_client()
            self.__dict__[_CLIENT] = shared
        yield shared

    channel.close = close_even_if_the_brpop_reply_is_lost
    channel._connparams = connparams_of_an_attached_transport
    channel.conn_or_acquire = conn_or_acquire_one_client
    setattr(channel, _GUARD, True)


require_tested_kombu(kombu.__version__)
install()
