"""Reading docker-compose.yml and .env.example the way Compose does, for the deploy tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# The services that run dustpan itself (the others are PostgreSQL and Redis images).
DUSTPAN_SERVICES = ("migrate", "api", "worker-ingestion", "worker-execution", "worker-ops", "beat", "flower")
WORKER_SERVICES = ("worker-ingestion", "worker-execution", "worker-ops")

_ASSIGNMENT = re.compile(r"^(?P<commented>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def load_compose() -> dict[str, Any]:
    """The compose file with YAML anchors and merge keys resolved, as Compose sees it."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(load_compose()["services"])


def command(service: str) -> list[str]:
    """The argv a service runs: its command, with the image's ENTRYPOINT cleared by `entrypoint: []`."""
    spec = services()[service]
    assert spec.get("entrypoint") == [], f"{service}: the image ENTRYPOINT must be cleared for a full command"
    argv = spec["command"]
    assert isinstance(argv, list) and all(isinstance(part, str) for part in argv), f"{service}: exec-form command"
    return list(argv)


def env_example(*, commented: bool = False) -> dict[str, str]:
    """The NAME=value lines of .env.example (env_file format); with commented, the `# NAME=value` ones too."""
    found: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match and (commented or not match["commented"]):
            found[match["name"]] = match["value"]
    return found
