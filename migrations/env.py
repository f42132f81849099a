"""Alembic environment: URL from dustpan settings (or the caller), metadata from models.tables."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

import models.tables_audit  # the audit's tables too
import models.tables_ops  # noqa: F401 - registers the operations tables on the metadata
from models.db import sqlalchemy_url
from models.tables import Base

target_metadata = Base.metadata


def _database_url() -> str:
    url = context.config.attributes.get("database_url")
    if url:
        return str(url)
    from workers.settings import get_settings

    configured = get_settings().database_url
    if not configured:
        raise SystemExit("dustpan: DUSTPAN_DATABASE_URL is not set (dustpan up starts an embedded database)")
    return configured


def run_migrations_offline() -> None:
    context.configure(url=sqlalchemy_url(_database_url()), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(sqlalchemy_url(_database_url()), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
