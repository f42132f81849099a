"""Broker dust cleanup and normalization: dry run by default, execute closes, a rerun finds nothing."""

from __future__ import annotations

from decimal import Decimal

from models.db import UnitOfWork
from models.tables import SymbolFreeze
from tasks.cleanup import close_small_positions
from tasks.guards import TradingPolicy
from tasks.ports import BrokerPosition
from tests.support.fakes import FakeBrokerage

D = Decimal
POLICY = TradingPolicy(frozenset({"AUT-USD"}), frozenset({"default"}))


def broker_with_positions() -> FakeBrokerage:
    broker = FakeBrokerage()
    broker.positions = [
        BrokerPosition("AAPL", D("0.004"), D(200), D(200), D("0.80")),  # dust: < 1.00
        BrokerPosition("MSFT", D("0.015"), D(400), D(400), D("6.00")),  # < 7.50: normalization only
        BrokerPosition("NVDA", D(3), D(120), D(120), D(360)),  # a real position
        BrokerPosition("AUT-USD", D("0.1"), D(5), D(5), D("0.50")),  # restricted: never traded
        BrokerPosition("TSLA", D("0.002"), D(250), D(250), D("0.50")),  # frozen below
    ]
    return broker


def run(uow: UnitOfWork, broker: FakeBrokerage, threshold: str, execute: bool, job: str = "broker_cleanup"):  # type: ignore[no-untyped-def]
    return close_small_positions(
        uow, broker.by_account, ["default"], POLICY, job=job, threshold_usd=D(threshold), execute=execute
    )


def freeze_tsla(uow: UnitOfWork) -> None:
    with uow:
        uow.session.add(SymbolFreeze(symbol="TSLA", reason="operator", source="manual"))
        uow.commit()


def test_dry_run_reports_what_it_would_close_and_touches_nothing(uow: UnitOfWork) -> None:
    freeze_tsla(uow)
    broker = broker_with_positions()
    summary = run(uow, broker, "1.00", execute=False).as_json()
    assert (summary["dry_run"], summary["positions_seen"], summary["dust_found"]) == (True, 5, 3)
    assert (summary["would_close"], summary["skipped"], summary["closed"]) == (1, 2, 0)
    assert summary["dust_value_usd"] == "1.80"
    assert {(line["symbol"], line["action"]) for line in summary["lines"]} == {
        ("AAPL", "would_close"),
        ("AUT-USD", "skipped"),
        ("TSLA", "skipped"),
    }
    assert broker.posts == {} and len(broker.positions) == 5


def test_execute_closes_dust_and_a_second_run_finds_none(uow: UnitOfWork) -> None:
    freeze_tsla(uow)
    broker = broker_with_positions()
    summary = run(uow, broker, "1.00", execute=True).as_json()
    assert (summary["closed"], summary["skipped"]) == (1, 2)
    assert [p.symbol for p in broker.positions] == ["MSFT", "NVDA", "AUT-USD", "TSLA"]
    again = run(uow, broker, "1.00", execute=True).as_json()
    assert (again["closed"], again["dust_found"]) == (0, 2)  # only the skipped ones remain


def test_normalization_closes_everything_below_its_larger_threshold(uow: UnitOfWork) -> None:
    broker = broker_with_positions()
    summary = run(uow, broker, "7.50", execute=True, job="normalize").as_json()
    assert {(line["symbol"], line["action"]) for line in summary["lines"]} == {
        ("AAPL", "closed"),
        ("MSFT", "closed"),
        ("TSLA", "closed"),
        ("AUT-USD", "skipped"),
    }
    assert [p.symbol for p in broker.positions] == ["NVDA", "AUT-USD"]


def test_unreachable_broker_is_reported_not_raised(uow: UnitOfWork) -> None:
    broker = broker_with_positions()
    broker.unavailable = 1
    summary = run(uow, broker, "1.00", execute=True).as_json()
    assert (summary["failed"], summary["positions_seen"]) == (1, 0)
