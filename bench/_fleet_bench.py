"""The frame the fleet benches run in: services, the API and workers, clean-up and failure reports."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench._measure import BenchError, Books, code_version, note_code_change, print_log_tails
from bench._servers import Services, fleet_env, fleet_services
from tests.support.fleet import Fleet

WEBHOOK_SECRET = "bench-webhook-secret"
API_TOKEN = "bench-api-token"


@dataclass
class FleetBench:
    fleet: Fleet  # the API and ``--workers`` workers of ``--concurrency``, started
    books: Books
    services: Services
    logs: Path


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """The options ``run_fleet_bench`` reads: the fleet's size and the servers to run it on."""
    parser.add_argument("--workers", type=int, default=2, help="`dustpan worker` processes")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork pool size of each worker")
    parser.add_argument("--database-url", help="a PostgreSQL server where the bench may create a database")
    parser.add_argument("--broker-url", help="a Redis for the Celery broker")
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy the fleet's logs (API, workers) into DIR at the end"
    )


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Iterable[str]) -> None:
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def run_fleet_bench(
    args: argparse.Namespace,
    measure: Callable[[FleetBench], None],
    *,
    env: dict[str, str] | None = None,
    fsync: bool = True,
) -> int:
    """Start the fleet on fresh services (``--database-url``/``--broker-url`` or embedded), run
    ``measure``, then stop and remove everything. Returns the exit code: 1 if the bench broke
    (with the fleet's log tails), 130 on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill: clean up as on Ctrl-C
    scratch = Path(tempfile.mkdtemp(prefix="dustpan-bench-"))
    try:
        with fleet_services(scratch, args.database_url, args.broker_url, fsync=fsync) as found:
            logs = scratch / "logs"
            logs.mkdir()
            fleet = Fleet(fleet_env(found, scratch / "data", WEBHOOK_SECRET, API_TOKEN) | (env or {}), logs)
            books = Books(found.database_url)
            try:
                code = code_version()
                print(f"starting API and {args.workers} worker(s) (logs in {logs}) ...", flush=True)
                fleet.start_api()
                for _ in range(args.workers):
                    fleet.start_worker(concurrency=args.concurrency)
                measure(FleetBench(fleet, books, found, logs))
                note_code_change(code)
            except Exception as exc:
                if not isinstance(exc, BenchError | AssertionError):
                    traceback.print_exc()
                print(f"\nbench failed: {exc}", file=sys.stderr)
                print_log_tails([fleet.api, *fleet.workers])
                return 1
            finally:
                books.close()
                fleet.stop()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        _keep_logs(scratch / "logs", getattr(args, "keep_logs", None))
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _keep_logs(logs: Path, keep: Path | None) -> None:
    if keep is not None and logs.is_dir():
        shutil.copytree(logs, keep, dirs_exist_ok=True)
        print(f"fleet logs kept in {keep}", file=sys.stderr)
