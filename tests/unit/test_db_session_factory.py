"""The session factory is built once per database URL and process, not once per unit of work."""

from __future__ import annotations

from models.db import UnitOfWork, dispose_engines

URL = "postgresql://nobody@127.0.0.1:1/none"  # never connected to: engines connect on first use


def test_units_of_work_of_one_url_share_one_session_factory_until_engines_are_disposed() -> None:
    first, second = UnitOfWork(URL), UnitOfWork(URL)
    assert first._factory is second._factory
    dispose_engines()  # as after a fork: the next unit of work gets a factory bound to a new engine
    third = UnitOfWork(URL)
    assert third._factory is not first._factory
    assert third._factory.kw["bind"] is not first._factory.kw["bind"]
