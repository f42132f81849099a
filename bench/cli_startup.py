"""Start-up of one-shot `dustpan` commands, optionally against another tree of the code.

    .venv/bin/python bench/cli_startup.py [--runs 9] [--compare DIR] [--database-url URL]

Times `python -m workers.cli <command>` (what the console script runs) for `--help`, `audit
--json`, `report --json` and `freezes --json` on a fresh, migrated, empty database: start-up
plus one short query, which is all a one-shot command costs when the books are small. With
``--compare DIR`` (another checkout, e.g. ``git archive <rev> | tar -x -C DIR``) both trees run
round robin, so that load on a shared machine moves both alike; medians and minimums are
printed side by side. Prints figures; never asserts on time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._servers import create_database, drop_database, postgres_server
from workers.cli import migrate

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["audit", "--json"], ["report", "--json"], ["freezes", "--json"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--compare", type=Path, help="another tree of the code, timed round robin with this one")
    parser.add_argument("--database-url", help="a server where the bench may create a database")
    args = parser.parse_args()
    trees = {"this tree": ROOT} | ({f"{args.compare}": args.compare.resolve()} if args.compare else {})
    with postgres_server(args.database_url) as admin_url, tempfile.TemporaryDirectory() as data_dir:
        url = create_database(admin_url, f"dustpan_startup_{uuid.uuid4().hex[:8]}")
        try:
            migrate(url)
            env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
            env |= {"DUSTPAN_DATABASE_URL": url, "DUSTPAN_BROKER_URL": "redis://127.0.0.1:1/0"}
            env["DUSTPAN_DATA_DIR"] = data_dir
            print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {args.runs} runs each")
            for command in COMMANDS:
                print(f"dustpan {' '.join(command):16}" + "".join(_figures(trees, command, env, args.runs)))
        finally:
            drop_database(admin_url, url)


def _figures(trees: dict[str, Path], command: list[str], env: dict[str, str], runs: int) -> list[str]:
    samples: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(runs):
        for name, tree in trees.items():
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "workers.cli", *command], env=env, cwd=tree, capture_output=True, check=False
            )
            samples[name].append((time.perf_counter() - started) * 1000)
            if done.returncode not in (0, 1):
                raise SystemExit(f"{name}: dustpan {' '.join(command)} failed: {done.stderr.decode()[-500:]}")
    return [f"  {name}: median {statistics.median(v):6.0f} ms, min {min(v):6.0f} ms" for name, v in samples.items()]


if __name__ == "__main__":
    main()
