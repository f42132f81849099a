"""The `dustpan` console script: one entry point for every role and operator command."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from workers import cli_books, cli_cleanup, cli_dust, cli_errors, cli_ops
from workers.settings import Settings, get_settings, read_settings

ALL_QUEUES = "ingestion,execution,ops"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dustpan", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dustpan {version()}")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of a failure")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="the whole stack in one terminal (embedded services when unset)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--flower", action="store_true", help="also run Flower")
    up.add_argument("--flower-port", type=int, default=5555, help="Flower's port with --flower")

    demo = commands.add_parser("demo", help="up, a simulated signed trade feed, then a report")
    demo.add_argument("--trades", type=int, default=3000)
    demo.add_argument("--symbols", type=int, default=6)
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--seed", type=int, default=None)

    api = commands.add_parser("api", help="the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=None, help="processes (default DUSTPAN_API_WORKERS, 1)")

    worker = commands.add_parser(
        "worker",
        help="a Celery worker: without --queues, a prefork pool on ingestion,ops and a threads pool on execution",
    )
    worker.add_argument("--queues", default=None, help="one pool on these queues (default: the two pools)")
    worker.add_argument("--concurrency", type=int, default=2, help="processes (threads for --pool threads)")
    worker.add_argument("--pool", choices=("auto", "prefork", "threads"), default="auto",
                        help="auto: threads for --queues execution, else prefork")  # fmt: skip
    worker.add_argument("--io-concurrency", type=int, default=16, help="threads of the execution pool")
    worker.add_argument("--name", default=None, help="node name (default worker-<pid>@<host>)")
    # Given by a worker to the execution node it keeps: the keeper does that node's rescues.
    worker.add_argument("--kept", action="store_true", help=argparse.SUPPRESS)  # worker_pools.IO_POOL_KEPT

    beat = commands.add_parser("beat", help="the Celery Beat scheduler")

    flower = commands.add_parser("flower", help="Flower, the Celery monitor")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument("--address", default="127.0.0.1")
    flower.add_argument(
        "--insecure", action="store_true", help="run without DUSTPAN_FLOWER_USER/_PASSWORD: no authentication at all"
    )

    commands.add_parser("migrate", help="Alembic upgrade to head")

    audit = commands.add_parser("audit", help="check the invariants; exit 1 on any imbalance")
    audit.add_argument("--json", action="store_true")

    report = commands.add_parser(
        "report", help="accumulators, executions, dust, freezes, balances, positions, P&L and audit"
    )
    report.add_argument("--json", action="store_true")
    for role in (worker, beat, flower):
        role.add_argument("--wait", type=int, default=60, help="seconds to wait for the database and broker at start")
    cli_ops.add_commands(commands)
    cli_dust.add_commands(commands)
    cli_cleanup.add_commands(commands)
    cli_books.add_commands(commands)
    for command in commands.choices.values():
        _show_defaults(command)
        # SUPPRESS: an unset flag after the command must not undo `dustpan --verbose COMMAND`.
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _show_defaults(command: argparse.ArgumentParser) -> None:
    """Name every option's default in its help (argparse's own formatter skips options without a help text)."""
    for action in command._actions:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "%(" not in text:
            action.help = f"{text} (default: %(default)s)".strip()


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("dustpan")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


# The services each command needs, checked before it starts (exit 3 with one line if one is down).
NEEDS: dict[str, tuple[str, ...]] = {
    "migrate": ("database",),
    "worker": ("database", "broker"),
    "beat": ("database", "broker"),
    "flower": ("broker",),
    "audit": ("database",),
    "report": ("database",),
    "freeze": ("database",),
    "unfreeze": ("database",),
    "freezes": ("database",),
    "balances": ("database",),
    "scan": ("database", "brokerage"),
    "sync": ("database", "brokerage"),
    "cleanup": ("database", "brokerage"),
    "normalize": ("database", "brokerage"),
}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    owner = os.environ.get("DUSTPAN_UP_PID", "")
    if owner.isdigit():  # started by `dustpan up`: never outlive it (workers/up_lifecycle.py)
        from workers.up_lifecycle import watch_owner

        watch_owner(int(owner))
    with cli_errors.boundary(getattr(args, "verbose", False)):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    settings = read_settings()
    command = args.command
    if command not in ("up", "demo"):
        # Other commands find the services a running `dustpan up` started when no URL is set.
        settings = settings.with_embedded_services()
    cli_errors.require(NEEDS.get(command, ()) or _configured_services(settings, command), getattr(args, "wait", 0))
    if command == "up":
        from workers.stack import run_up

        run_up(settings, args.host, args.port, args.flower_port if args.flower else None)
    elif command == "demo":
        from workers.demo import run_demo

        raise SystemExit(run_demo(settings, trades=args.trades, symbols=args.symbols, port=args.port, seed=args.seed))
    elif command == "migrate":
        migrate(_require_database(settings.database_url))
    elif command == "api":
        _serve_api(args.host, args.port, args.workers)
    elif command == "worker":
        _run_worker(args.queues, args.concurrency, args.name, args.pool, args.io_concurrency, args.kept)
    elif command == "beat":
        _run_beat(settings.data_dir)
    elif command == "flower":
        _run_flower(args.address, args.port, args.insecure)
    elif command == "audit":
        raise SystemExit(_audit(as_json=args.json))
    elif command == "report":
        from workers.report import print_report

        print_report(as_json=args.json)
    elif command in cli_ops.COMMANDS:
        raise SystemExit(cli_ops.run(args))
    elif command in cli_dust.COMMANDS:
        raise SystemExit(cli_dust.run(args))
    elif command in cli_cleanup.COMMANDS:
        raise SystemExit(cli_cleanup.run(args))
    elif command in cli_books.COMMANDS:
        raise SystemExit(cli_books.run(args))


def _configured_services(settings: Settings, command: str) -> tuple[str, ...]:
    """`up` and `demo` check the servers they were pointed at; the embedded ones they start."""
    if command not in ("up", "demo"):
        return ()
    return tuple(name for name, url in (("database", settings.database_url), ("broker", settings.broker_url)) if url)


def _require_database(url: str | None) -> str:
    if not url:
        raise cli_errors.UsageError("DUSTPAN_DATABASE_URL is not set (dustpan up starts an embedded database)")
    return url


def _require_services() -> None:
    settings = get_settings()
    _require_database(settings.database_url)
    if not settings.broker_url:
        raise cli_errors.UsageError("DUSTPAN_BROKER_URL is not set (dustpan up starts an embedded Redis)")


def migrate(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).resolve().parent.parent / "migrations"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


def _serve_api(host: str, port: int, workers: int | None) -> None:
    import uvicorn

    from workers.logging_setup import logging_config

    _require_services()
    settings = get_settings()
    if not settings.webhook_secret or not settings.api_token:
        raise cli_errors.UsageError(
            "DUSTPAN_WEBHOOK_SECRET and DUSTPAN_API_TOKEN must be set for the API"
            " (or run it beside `dustpan up`, which keeps them in .dustpan/secrets.json)"
        )
    from workers.api_access import log_startup
    from workers.logging_setup import configure

    processes = workers or settings.api_workers
    configure(settings.log_format, settings.log_level)
    log_startup(f"http://{host}:{port}", version(), settings.database_url, processes)
    uvicorn.run(
        "workers.api:app",
        host=host,
        port=port,
        # One by default: on 2 cores a second process measured no faster (it halves each one's
        # webhook groups and adds a process to schedule); more cores may want more.
        workers=processes,
        log_config=logging_config(settings.log_format, settings.log_level),
        log_level="warning",
        access_log=False,
        # Slow clients: header and body deadlines (workers/http_server.py); past max_connections
        # uvicorn answers 503 at once instead of queueing without bound.
        http="workers.http_server:DeadlineProtocol",
        limit_concurrency=settings.http.max_connections,
    )


def _start_logging() -> Settings:
    """Before Celery starts, so that its start-up warnings are log lines too (it then keeps these handlers)."""
    from workers.logging_setup import configure

    settings = get_settings()
    configure(settings.log_format, settings.log_level)
    return settings


def _run_worker(
    queues: str | None,
    concurrency: int,
    name: str | None,
    pool: str,
    io_concurrency: int,
    kept: bool = False,
) -> None:
    _require_services()
    settings = _start_logging()
    # A crash in native code (a SIGSEGV in an extension, or in the interpreter) prints every
    # thread's Python stack to stderr, the worker's log, before the process dies: its keeper or
    # process manager starts it again, and the log says where it was.
    faulthandler.enable()
    from celery.signals import worker_shutdown

    from workers.celery_app import app
    from workers.worker_pools import FAST_QUEUES, IO_QUEUES, STANDBY_ENV, IoPoolKeeper, pool_for

    if os.environ.pop(STANDBY_ENV, None) and not _stand_by(app):
        return

    node = name or f"worker-{os.getpid()}@{socket.gethostname()}"
    if queues is None:  # the two pools: this node on ingestion,ops, a threads node on execution
        queues = FAST_QUEUES
        from tasks.sweep_tasks import release_dead_claims, rescue_executions

        deps = app.dependencies
        keeper = IoPoolKeeper(
            f"io-{node}",
            io_concurrency,
            rescue=lambda already, died_at: rescue_executions(deps, already, died_at),  # type: ignore[arg-type]
            rescue_seconds=deps.config().execution.claim_lease_seconds + 2,
            release=lambda claimant: release_dead_claims(deps, claimant),
            standby_below_load_percent=settings.execution.standby_below_load_percent,
        )
        worker_shutdown.connect(lambda **_: keeper.stop(), weak=False)
        keeper.start()
    if queues == IO_QUEUES and not kept:  # an execution node starting: what the one before it may have held
        from tasks.sweep_tasks import rescue_executions
        from workers.worker_pools import start_rescue

        deps = app.dependencies
        stopping = threading.Event()
        worker_shutdown.connect(lambda **_: stopping.set(), weak=False)
        start_rescue(
            lambda already, died_at: rescue_executions(deps, already, died_at),  # type: ignore[arg-type]
            deps.config().execution.claim_lease_seconds + 2,
            stopping,
        )
    if pool_for(queues, pool) == "prefork":  # the node that ingests sweeps too, with or without Beat
        from workers.worker_sweep import WorkerSweep

        sweep = WorkerSweep(app.dependencies, settings.schedule.sweep_seconds)
        worker_shutdown.connect(lambda **_: sweep.stop(), weak=False)
        sweep.start()
    from celery import concurrency as pools
    from celery.utils.log import mlevel
    from celery.utils.nodenames import default_nodename, host_format

    # What `celery worker` does with its options, without its command line: that imports every
    # Celery command and their plugins (click-repl, prompt_toolkit, Flower's), over a second of
    # CPU at each start, which a restarted node's orders waited for.
    worker = app.Worker(
        hostname=host_format(default_nodename(node)),  # as `-n` is read
        pool_cls=pools.get_implementation(pool_for(queues, pool)),
        concurrency=concurrency,
        queues=queues.split(","),
        loglevel=mlevel(settings.log_level.upper()),
        # JSON logs: no start-up banner on stdout, so every line is JSON. Task events as
        # celeryconfig says: off until a monitor (Flower) asks, unless celery.task_events.
        quiet=settings.log_format == "json",
        # No gossip, no mingle: dustpan revokes nothing, and mingle's neighbour sync costs every
        # node a second at start, which a restarted worker's queued orders waited for.
        without_gossip=True,
        without_mingle=True,
    )
    worker.start()
    raise SystemExit(worker.exitcode)


# The modules an execution node's start imports besides the app's own.
NODE_MODULES = ("celery.apps.worker", "celery.worker", "celery.concurrency.thread", "kombu.transport.redis")


def _stand_by(app: Any) -> bool:
    """A keeper's standby execution node: everything a node imports, imported now; then wait for
    the keeper's word on stdin (``workers.worker_pools.GO``). False: the keeper is gone."""
    import importlib

    from workers.worker_pools import GO

    for module in NODE_MODULES:
        importlib.import_module(module)
    app.loader.import_default_modules()
    log = logging.getLogger("workers.worker_pools")
    log.info("execution pool standby ready (pid %d): it takes over when the execution pool dies", os.getpid())
    try:
        if sys.stdin.buffer.readline() != GO:  # end of file: the keeper is gone
            return False
    except KeyboardInterrupt:  # Ctrl-C on the worker's terminal reaches its whole process group
        return False
    log.info("execution pool standby (pid %d) taking over", os.getpid())
    return True


def _run_beat(data_dir: Path) -> None:
    _require_services()
    settings = _start_logging()
    from workers.celery_app import app

    data_dir.mkdir(parents=True, exist_ok=True)
    quiet = settings.log_format == "json"  # no banner on stdout between the JSON lines
    app.Beat(loglevel=settings.log_level, schedule=str(data_dir / "celerybeat-schedule"), quiet=quiet).run()


def _run_flower(address: str, port: int, insecure: bool) -> None:
    settings = get_settings()
    user, password = settings.flower_user, settings.flower_password
    if not (user and password) and not insecure:
        print(
            "dustpan: DUSTPAN_FLOWER_USER and DUSTPAN_FLOWER_PASSWORD must be set for Flower"
            " (or pass --insecure to run it without authentication)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    _require_services()
    from workers.flower import run_flower

    run_flower(address, port, (user, password.get_secret_value()) if user and password else None)


def _audit(as_json: bool) -> int:
    # Only what the audit reads: not workers.runtime, whose adapters and task configs it never uses.
    from datetime import UTC, datetime

    from models.db import UnitOfWork
    from tasks.audit import audit_books

    settings = get_settings()
    uow = UnitOfWork(_require_database(settings.database_url))
    report = audit_books(uow, settings.accumulation.threshold, datetime.now(UTC), settings.audit.max_waiting_seconds)
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        from workers.report import print_audit

        print_audit(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    main()
