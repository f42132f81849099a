"""A PostgreSQL server for a bench: the one given by URL, or an embedded one in a temp dir."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models.db import dispose_engines


@contextmanager
def postgres_server(database_url: str | None) -> Iterator[str]:
    """Yield an admin URL (a server where the bench may create databases); stop what it started."""
    with tempfile.TemporaryDirectory(prefix="dustpan-bench-") as tmp:
        server = None
        if not database_url:
            from workers.embedded import EmbeddedPostgres

            server = EmbeddedPostgres(Path(tmp))
            server.start()
            database_url = server.url
        try:
            yield database_url
        finally:
            dispose_engines()
            if server is not None:
                server.stop()
