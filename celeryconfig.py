"""Celery settings only: broker, queues, routes, beat schedule and reliability knobs."""

from __future__ import annotations

from datetime import timedelta

from kombu import Queue
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from workers.settings import get_settings

_settings = get_settings()

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
# A worker waits out a broker outage of any length (celery's default gives up after 100
# attempts and exits), reconnecting within seconds of the return (workers/celery_consumer.py).
broker_connection_max_retries = None
worker_consumer = "workers.celery_consumer:PromptReconnectConsumer"
# Redis redelivers an unacknowledged message (its worker was SIGKILLed, or lost Redis before
# the ack) once it is visibility_timeout old. kombu's default is an hour, looked for every
# 100 s; here each worker looks every restore interval, so such messages come back within
# about a minute. The timeout must exceed the longest delivery (time limits and countdowns
# below, derived from it), or a running task is delivered twice.
broker_transport_options = {
    "visibility_timeout": _settings.celery.visibility_timeout_seconds,
    "unacked_restore_interval": _settings.celery.restore_interval_seconds,
    "unacked_restore_throttle": 1,  # scan on every interval, not every 10th
    # A worker on several queues takes from the first non-empty one in sorted name order:
    # execution, then ingestion, then ops. Work already under way (an order to send) goes
    # before new work (trades to accumulate), and housekeeping fills the gaps; kombu's default
    # round robin made a ready submit wait behind accumulate runs. A fleet that must never
    # delay ops under sustained load gives it a worker of its own (`--queues ops`).
    "queue_order_strategy": "sorted",
}
result_backend = None
task_ignore_result = True

task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# Acknowledge after the task ran, and give the message back when the worker process dies:
# every task is idempotent, so running twice is harmless and losing one is not.
task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure_or_timeout = True
worker_prefetch_multiplier = 1
task_time_limit = _settings.celery.hard_time_limit_seconds
task_soft_time_limit = _settings.celery.soft_time_limit_seconds
worker_max_tasks_per_child = 10_000

# Task events (task-received, -started, -succeeded... over Redis pub/sub) cost about a tenth of
# a worker's CPU per task whether anyone listens or not. Off by default: Flower broadcasts
# `enable_events` every 5 s, so a worker sends them from then on, while a monitor runs (and until
# it restarts). `celery.task_events` turns them on from the start, for a monitor that does not
# ask (or `celery -A workers.celery_app control enable_events`), and adds task-sent events, which
# the sender emits and no broadcast can turn on: Flower then shows when a task was sent.
worker_send_task_events = _settings.celery.task_events
task_send_sent_event = _settings.celery.task_events

task_default_queue = "ops"
task_queues = (
    Queue("ingestion", routing_key="ingestion"),
    Queue("execution", routing_key="execution"),
    Queue("ops", routing_key="ops"),
)
task_routes = {
    "ingestion.*": {"queue": "ingestion"},
    "execution.*": {"queue": "execution"},
    "sweep.*": {"queue": "ops"},
    "audit.*": {"queue": "ops"},
    "dust.*": {"queue": "ops"},
    "venues.*": {"queue": "ops"},
    "positions.*": {"queue": "ops"},
    "balances.*": {"queue": "ops"},
    "prices.*": {"queue": "ops"},
}

# Exactly one Beat sends the schedule across the fleet: RedBeat keeps the schedule and its
# last-run times in Redis behind a lock; a second Beat waits, and takes over within
# redbeat_lock_timeout when the leader dies. Every countdown stays far below the visibility timeout.
# RedBeat's own scheduler exits when Redis blips during a tick; this subclass stops scheduling,
# re-acquires the lock with backoff and goes on (workers/beat_scheduler.py).
beat_scheduler = "workers.beat_scheduler.LeaderScheduler"
redbeat_redis_url = broker_url
# Set, even empty: left unset, RedBeat falls back to broker_transport_options (broker options it
# does not forward to its client anyway) and warns at every start that the fallback will go.
# Its client retries a blip of a fraction of a second itself; anything longer reaches the
# scheduler, which stops scheduling and re-acquires with its own backoff (redis-py's default,
# 3 retries of up to 10 s, would hold a tick for seconds without saying so).
redbeat_redis_options: dict[str, object] = {
    "retry": Retry(ExponentialWithJitterBackoff(base=0.1, cap=0.5), 2),
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
}
redbeat_key_prefix = "dustpan:redbeat"
redbeat_lock_timeout = _settings.schedule.leader_lock_seconds
beat_max_loop_interval = max(1, min(5, redbeat_lock_timeout // 3))  # the lock is renewed every loop


def _every(seconds: object) -> timedelta:
    return timedelta(seconds=float(str(seconds)))  # float-ok: a duration


beat_schedule = {
    # A sweep not started within its interval is dropped: the next one is about to come.
    "sweep-rewake": {
        "task": "sweep.rewake",
        "schedule": _every(_settings.schedule.sweep_seconds),
        "options": {"expires": max(1, int(_settings.schedule.sweep_seconds))},
    },
    "audit-check": {
        "task": "audit.check",
        "schedule": _every(_settings.schedule.audit_seconds),
        "options": {"expires": 120},
    },
    # One bounded chunk of the background re-verification of the whole history per tick.
    "audit-verify": {
        "task": "audit.verify",
        "schedule": _every(_settings.schedule.audit_verify_seconds),
        "options": {"expires": max(1, int(_settings.schedule.audit_verify_seconds * 4 / 5))},
    },
    "dust-broker-cleanup": {
        "task": "dust.broker_cleanup",
        "schedule": _every(_settings.schedule.cleanup_seconds),
        "options": {"expires": 600},
    },
    "dust-normalize": {
        "task": "dust.normalize",
        "schedule": _every(_settings.schedule.normalize_seconds),
        "options": {"expires": 3600},
    },
    # A tick not started within 80% of the interval is dropped: the next one is about to come.
    "balances-fetch": {
        "task": "balances.fetch",
        "schedule": _every(_settings.schedule.balances_seconds),
        "options": {"expires": max(1, int(_settings.schedule.balances_seconds * 4 / 5))},
    },
    "prices-refresh": {
        "task": "prices.refresh",
        "schedule": _every(_settings.schedule.prices_seconds),
        "options": {"expires": max(1, int(_settings.schedule.prices_seconds * 4 / 5))},
    },
    # Dust family: a tick not started within 80% of its interval is dropped, the next one is coming.
    "venues-sync": {
        "task": "venues.sync",
        "schedule": _every(_settings.schedule.venues_seconds),
        "options": {"expires": max(1, int(_settings.schedule.venues_seconds * 4 / 5))},
    },
    "positions-sync": {
        "task": "positions.sync",
        "schedule": _every(_settings.schedule.positions_seconds),
        "options": {"expires": max(1, int(_settings.schedule.positions_seconds * 4 / 5))},
    },
    "dust-scan": {
        "task": "dust.scan",
        "schedule": _every(_settings.schedule.dust_scan_seconds),
        "options": {"expires": max(1, int(_settings.schedule.dust_scan_seconds * 4 / 5))},
    },
}
