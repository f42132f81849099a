"""Engine and session factory, and the unit of work that owns one transaction."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
# sessionmaker() builds a Session subclass, and the first session of each new class sets up its
# event dispatch: a tenth of the API's CPU on one-trade webhooks when made per unit of work.
_session_factories: dict[str, sessionmaker[Session]] = {}


def sqlalchemy_url(url: str) -> str:
    """Pin the psycopg2 driver: SQLAlchemy 2.1 maps a bare postgresql:// URL to psycopg 3."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def engine_for(url: str) -> Engine:
    """One engine per URL and process (re-created after a fork by ``dispose_engines``)."""
    engine = _engines.get(url)
    if engine is None:
        engine = create_engine(
            sqlalchemy_url(url),
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            connect_args={"connect_timeout": 5, "application_name": "dustpan"},
        )
        _engines[url] = engine
    return engine


def dispose_engines() -> None:
    """Drop pooled connections inherited from a parent process (Celery prefork children)."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _session_factories.clear()


def session_factory(url: str) -> sessionmaker[Session]:
    factory = _session_factories.get(url)
    if factory is None:
        factory = _session_factories[url] = sessionmaker(bind=engine_for(url), expire_on_commit=False)
    return factory


class UnitOfWork:
    """One transaction: ``with uow:`` opens it, ``commit()`` ends it; leaving without commit rolls back."""

    def __init__(self, url: str) -> None:
        self._factory = session_factory(url)
        self.session: Session

    def __enter__(self) -> UnitOfWork:
        self.session = self._factory()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # close() rolls back whatever was not committed; loaded objects stay readable.
        self.session.close()

    def commit(self) -> None:
        self.session.commit()
