"""The Alembic migrations build exactly the schema the models describe, both ways."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import models.tables_audit  # the audit's tables too
import models.tables_ops  # noqa: F401 - registers the operations tables
from models.db import sqlalchemy_url
from models.tables import Base
from tests.conftest import Services, _create_database

REPO = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(REPO / "migrations"))
    config.attributes["database_url"] = url
    return config


def differences(url: str) -> list[object]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_matches_the_models_and_downgrade_undoes_it(services: Services) -> None:
    url = _create_database(services.admin_database_url, "dustpan_migrations_check")
    config = alembic_config(url)
    command.upgrade(config, "head")
    assert differences(url) == []
    command.downgrade(config, "base")
    assert {d[1].name for d in differences(url) if d[0] == "add_table"} >= {"trades", "executions", "lots"}  # type: ignore[index,attr-defined]
    command.upgrade(config, "head")
    assert differences(url) == []
