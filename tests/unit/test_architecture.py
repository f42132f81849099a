"""The shape of the code, checked: layers point one way, no import cycles, one task convention."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("workers", "tasks", "models")


def test_import_contracts_hold() -> None:
    # The contracts live in pyproject.toml ([tool.importlinter]): workers -> tasks -> models,
    # and models.domain free of I/O libraries.
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint_imports)], cwd=REPO, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_no_import_cycle_among_the_projects_modules() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append(" -> ".join([importer, *back]))
    assert cycles == [], "\n".join(cycles)


def test_every_task_lives_in_the_tasks_module_of_its_family() -> None:
    from workers.celery_app import TASK_MODULES, app

    app.loader.import_default_modules()
    names = sorted(name for name in app.tasks if not name.startswith("celery."))
    assert names, "no task registered"
    for name in names:
        family = name.split(".")[0]
        assert app.tasks[name].run.__module__ == f"tasks.{family}_tasks", f"{name} is not in tasks/{family}_tasks.py"
    assert sorted(TASK_MODULES) == sorted({f"tasks.{name.split('.')[0]}_tasks" for name in names})
    assert all(a != b for a, b in pairwise(sorted(TASK_MODULES)))


def test_the_packages_type_check() -> None:
    # mypy ([tool.mypy] in pyproject.toml) finds what no test path runs: a name a refactor left
    # undefined in a task body, a port method called with the wrong types.
    mypy = Path(sys.executable).with_name("mypy")
    run = subprocess.run([str(mypy)], cwd=REPO, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
