"""dustpan's Celery app plus one task that does nothing: the ceiling a Celery task can reach here.

    python -m bench.noop_app worker --queues bench.noop --concurrency 2 --name noop1@%h

runs ``dustpan worker`` itself (``workers.cli``: the same Celery options, logging and
celeryconfig: acks_late, prefetch 1, JSON, task events, the metrics signal handlers) with
``bench.noop`` registered. Each run of the task counts itself in Redis (one INCR), so a bench
knows when the last one ran without any result backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file too, not only with -m

from workers import runtime
from workers.celery_app import app

NOOP_QUEUE = "bench.noop"
RAN_KEY = "dustpan:bench:noop:ran"


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    runtime.redis_client().incr(RAN_KEY)


if __name__ == "__main__":
    from workers.cli import main

    main()
