"""docker-compose.yml, .env.example and the Dockerfile, checked without a Docker engine.

The Compose Specification schema ships inside check-jsonschema, so the validation runs offline.
The structural tests hold the deployment to what the README promises: one Beat, every role a
`dustpan` command, Flower on loopback only, a Redis that neither forgets nor evicts, a start
order gated on health, and no secret outside .env.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tests.deploy.compose_files import (
    COMPOSE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    DUSTPAN_SERVICES,
    REPO,
    WORKER_SERVICES,
    command,
    env_example,
    load_compose,
    services,
)
from workers.cli import ALL_QUEUES, _parser
from workers.embedded import PG_VERSION
from workers.settings import Settings, SettingsError, read_settings
from workers.worker_pools import pool_for

SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|_KEY\b|_KEY_ID\b")
INTERPOLATION = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:?[?-][^}]*)?\}$")
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
# Environment names with our prefix that are not settings (read by workers.settings itself).
NOT_SETTINGS = {"DUSTPAN_CONFIG"}


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    depends_on:\n", "    depend_on:\n", 1))
    result = check_jsonschema(broken)
    assert result.returncode == 1 and "depend_on" in result.stdout, result.stdout + result.stderr


def test_every_role_runs_a_dustpan_command_the_cli_accepts() -> None:
    assert set(DUSTPAN_SERVICES) <= set(services())
    roles = {}
    for service in DUSTPAN_SERVICES:
        argv = command(service)
        assert argv[0] == "dustpan", f"{service}: {argv}"
        roles[service] = _parser().parse_args(argv[1:])  # argparse exits on an unknown option
    assert {service: args.command for service, args in roles.items()} == {
        "migrate": "migrate",
        "api": "api",
        "worker-ingestion": "worker",
        "worker-execution": "worker",
        "worker-ops": "worker",
        "beat": "beat",
        "flower": "flower",
    }
    assert (roles["api"].host, roles["api"].port) == ("0.0.0.0", 8000)
    assert (roles["flower"].address, roles["flower"].port) == ("0.0.0.0", 5555)


def test_the_worker_pools_split_the_queues_into_bulkheads_and_consume_all_of_them() -> None:
    pools = {name: _parser().parse_args(command(name)[1:]) for name in WORKER_SERVICES}
    queues = {name: args.queues.split(",") for name, args in pools.items()}
    # Brokerage I/O has a pool of its own, of threads; nothing that accumulates ever waits on it.
    assert [name for name, names in queues.items() if "execution" in names] == ["worker-execution"]
    assert queues["worker-execution"] == ["execution"]
    assert pool_for(pools["worker-execution"].queues, pools["worker-execution"].pool) == "threads"
    assert queues["worker-ingestion"] == ["ingestion"]
    assert pool_for(pools["worker-ingestion"].queues, pools["worker-ingestion"].pool) == "prefork"
    assert (pools["worker-ops"].queues, pools["worker-ops"].concurrency) == ("ops", 1)
    union = [queue for names in queues.values() for queue in names]
    assert sorted(union) == sorted(ALL_QUEUES.split(","))  # each queue consumed, and by one service


def test_exactly_one_beat_service() -> None:
    beats = [name for name, spec in services().items() if list(spec.get("command") or [])[:2] == ["dustpan", "beat"]]
    assert beats == ["beat"]
    spec = services()["beat"]
    assert spec.get("deploy", {}).get("replicas", 1) == 1 and spec.get("scale", 1) == 1


def test_workers_are_scalable() -> None:
    for name in WORKER_SERVICES:
        spec = services()[name]
        # a fixed container name or a published host port would stop `--scale` at one container
        assert "container_name" not in spec and "ports" not in spec, name


def published(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(host_ip, published port) of each of a service's ports, short or long syntax."""
    found = []
    for port in spec.get("ports", []):
        if isinstance(port, dict):
            found.append((str(port.get("host_ip", "")), str(port.get("published", ""))))
        else:
            parts = str(port).split(":")
            found.append((parts[0], parts[1]) if len(parts) == 3 else ("", parts[0] if len(parts) == 2 else ""))
    return found


def test_flower_is_published_on_loopback_only_and_nothing_else_but_the_api_is_published() -> None:
    assert published(services()["flower"]) == [("127.0.0.1", "5555")]
    assert published(services()["api"]) == [("", "8000")]
    for name, spec in services().items():
        if name not in ("api", "flower"):
            assert not spec.get("ports"), f"{name} publishes {spec['ports']}"


def test_redis_keeps_queued_messages_and_never_evicts_them() -> None:
    redis = services()["redis"]
    assert str(redis["image"]).startswith("redis:7")
    argv = " ".join(redis["command"])
    assert "--appendonly yes" in argv and "--maxmemory-policy noeviction" in argv
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "--maxmemory 256mb" in argv


def test_postgres_keeps_its_data_in_a_named_volume_and_reports_readiness() -> None:
    compose, postgres = load_compose(), services()["postgres"]
    assert postgres["image"] == f"postgres:{PG_VERSION}"  # the major version the tests run against
    volume = next(str(v) for v in postgres["volumes"] if str(v).endswith(":/var/lib/postgresql"))
    assert volume.split(":")[0] in compose["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_start_order_is_gated_on_health_and_a_finished_migration() -> None:
    conditions = {
        name: {target: dependency["condition"] for target, dependency in spec["depends_on"].items()}
        for name, spec in services().items()
        if name in DUSTPAN_SERVICES
    }
    gated_on_migrate = {"migrate": "service_completed_successfully", "redis": "service_healthy"}
    assert conditions == {
        "migrate": {"postgres": "service_healthy"},
        "api": gated_on_migrate,
        "worker-ingestion": gated_on_migrate,
        "worker-execution": gated_on_migrate,
        "worker-ops": gated_on_migrate,
        "beat": gated_on_migrate,
        "flower": {"redis": "service_healthy"},
    }
    for targets in conditions.values():
        for target, condition in targets.items():
            if condition == "service_healthy":
                assert "healthcheck" in services()[target], f"{target} has no healthcheck to wait for"
    assert services()["migrate"]["restart"] == "no"


def test_the_api_healthcheck_asks_liveness_only() -> None:
    healthcheck = services()["api"]["healthcheck"]
    assert "http://127.0.0.1:8000/health/live" in healthcheck["test"]


LONG_RUNNING = [name for name in services() if name != "migrate"]


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_long_running_service_has_a_healthcheck_log_rotation_and_resource_limits(name: str) -> None:
    spec = services()[name]
    assert spec["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), spec["healthcheck"]
    assert spec["logging"]["options"]["max-size"] and spec["logging"]["options"]["max-file"]
    limits = spec["deploy"]["resources"]["limits"]
    assert limits["memory"] and limits["cpus"]


@pytest.mark.parametrize("name", WORKER_SERVICES)
def test_a_worker_healthcheck_pings_its_own_node(name: str) -> None:
    argv = command(name)
    node = argv[argv.index("--name") + 1]
    assert "%h" in node  # one node name per replica
    assert services()[name]["healthcheck"]["test"][-2:] == ["worker", node]


def test_redis_memory_is_bounded_below_its_container_limit() -> None:
    redis = services()["redis"]
    argv = redis["command"]
    maxmemory = argv[argv.index("--maxmemory") + 1]
    assert maxmemory.endswith("mb")
    limit = redis["deploy"]["resources"]["limits"]["memory"]
    assert limit.endswith("M") and int(maxmemory[:-2]) < int(limit[:-1])


def strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in [str(key), *strings(value)]]
    if isinstance(node, list):
        return [text for value in node for text in strings(value)]
    return [str(node)]


def test_no_secret_in_the_compose_file() -> None:
    for name, spec in services().items():
        environment = spec.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        if name in DUSTPAN_SERVICES:
            assert spec["env_file"] == ".env", f"{name}: settings come from .env"
            assert not [key for key in environment if key.startswith("DUSTPAN_")], f"{name}: a setting outside .env"
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.match(str(value)), f"{name}: {key} is a literal, not ${{{key}:?...}}"
    text = strings(load_compose())
    assert not [s for s in text if URL_WITH_PASSWORD.search(s)], "a URL with a password in the compose file"
    placeholders = {value for key, value in env_example().items() if SECRET_NAME.search(key)}
    assert placeholders and not placeholders & set(COMPOSE_FILE.read_text().split())


def is_setting(name: str) -> bool:
    """DUSTPAN_SECTION__FIELD names a field of workers.settings.Settings (nested sections with __)."""
    model: type[BaseModel] = Settings
    for part in name.removeprefix("DUSTPAN_").lower().split("__"):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            model = field.annotation
    return True


def test_every_dustpan_variable_in_env_example_is_a_setting() -> None:
    names = [name for name in env_example(commented=True) if name.startswith("DUSTPAN_")]
    assert {"DUSTPAN_FLOWER_USER", "DUSTPAN_FLOWER_PASSWORD"} <= set(names)
    assert [name for name in names if name not in NOT_SETTINGS and not is_setting(name)] == []


def test_env_example_lists_what_a_deployment_needs_with_the_compose_hostnames() -> None:
    env = env_example()
    needed = {
        "DUSTPAN_DATABASE_URL",
        "DUSTPAN_BROKER_URL",
        "DUSTPAN_WEBHOOK_SECRET",
        "DUSTPAN_API_TOKEN",
        "DUSTPAN_BROKERAGE",
        "DUSTPAN_ALPACA_TRADING_URL",
        "DUSTPAN_ALPACA_DATA_URL",
        "DUSTPAN_ALPACA_KEY_ID",
        "DUSTPAN_ALPACA_SECRET_KEY",
        "DUSTPAN_FLOWER_USER",
        "DUSTPAN_FLOWER_PASSWORD",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
    }
    assert needed <= set(env)
    assert env["DUSTPAN_DATABASE_URL"] == (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/{env['POSTGRES_DB']}"
    )
    assert env["DUSTPAN_BROKER_URL"].startswith("redis://redis:6379/")
    interpolated = {name for s in strings(load_compose()) for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", s)}
    assert interpolated <= set(env), f"compose interpolates {interpolated - set(env)}, missing from .env.example"


def test_env_example_values_are_accepted_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in list(os.environ) if name.startswith("DUSTPAN_")]:
        monkeypatch.delenv(name)
    for name, value in env_example(commented=True).items():
        if name.startswith("DUSTPAN_") and name not in NOT_SETTINGS:
            monkeypatch.setenv(name, value)
    try:
        settings = read_settings()
    except SettingsError as exc:
        pytest.fail(f".env.example is refused by dustpan: {exc}")
    assert settings.brokerage == "paper" and settings.webhook_secret


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_installs_the_package_without_dev_extras_and_runs_dustpan_as_a_user() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [argument for keyword, argument in instructions if keyword == "RUN"]
    assert any(re.search(r"\bpip install -c constraints\.txt \.(\s|$)", run) for run in runs), runs
    assert not any("[" in run or "-e " in run for run in runs)  # no dev extra, no embedded servers
    users = [argument for keyword, argument in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last = {keyword: argument for keyword, argument in instructions}
    assert last["ENTRYPOINT"] == '["dustpan"]'
    assert last["CMD"].startswith('["api"')
    assert [keyword for keyword, _ in instructions].index("USER") < [k for k, _ in instructions].index("ENTRYPOINT")


def test_dockerfile_copies_everything_the_package_is_built_from_and_dockerignore_keeps_it() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {f"{module}.py" for module in project["tool"]["setuptools"]["py-modules"]}
    needed |= {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {
        source.rstrip("/")
        for keyword, argument in dockerfile_instructions()
        if keyword == "COPY"
        for source in argument.split()[:-1]
        if not source.startswith("--")
    }
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    ignored = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()[:1] not in ("", "#")]
    for source in copied:
        assert (REPO / source).exists(), source
        assert not [p for p in ignored if fnmatch(source, p.rstrip("/"))], f"{source} is in .dockerignore"
    for secret in (".env", ".dustpan/"):
        assert secret in ignored
