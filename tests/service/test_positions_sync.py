"""Positions sync: broker positions of each account into holding lots (tasks.lots), on real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.venue_sources import RuleOverride
from models.tables_ops import Lot
from tasks.dust import DustScanConfig, scan_dust
from tasks.guards import TradingPolicy
from tasks.lots import CLOSED_NOTE, sync_account_lots, sync_positions
from tasks.ports import Brokerage, BrokerPosition
from tasks.venues import VenueConfig
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 4, 2, 15, 0, tzinfo=UTC)
BTC_OVERRIDE = RuleOverride(whole_shares=False, step=D("0.00001"), min_quantity=D("0.0001"))
VENUES = VenueConfig(overrides={"BTC-USD": BTC_OVERRIDE})


def position(symbol: str, quantity: str, price: str = "10") -> BrokerPosition:
    return BrokerPosition(symbol, D(quantity), D(price), D(price), D(quantity) * D(price))


def lots(uow: UnitOfWork) -> list[Lot]:
    with uow:
        return list(uow.session.scalars(select(Lot).order_by(Lot.id)))


def test_positions_become_one_broker_lot_each_updated_in_place(uow: UnitOfWork) -> None:
    sync_account_lots(uow, "default", [position("AAPL", "10"), position("BTC-USD", "0.5")], NOW)
    created = {lot.symbol: lot for lot in lots(uow)}
    assert {s: (lot.source, lot.status, lot.quantity) for s, lot in created.items()} == {
        "AAPL": ("broker", "open", D(10)),
        "BTC-USD": ("broker", "open", D("0.5")),
    }
    result = sync_account_lots(uow, "default", [position("AAPL", "12"), position("BTC-USD", "0.5")], NOW)
    assert result.updated == ["AAPL"]
    assert [(lot.id, lot.quantity) for lot in lots(uow)] == [
        (created["AAPL"].id, 12),
        (created["BTC-USD"].id, D("0.5")),
    ]


def test_position_gone_at_the_broker_leaves_its_lot_at_zero_and_it_comes_back_in_place(uow: UnitOfWork) -> None:
    sync_account_lots(uow, "default", [position("AAPL", "10")], NOW)
    result = sync_account_lots(uow, "default", [], NOW)
    [lot] = lots(uow)
    assert (result.closed, lot.quantity, lot.status, lot.note) == (["AAPL"], 0, "open", CLOSED_NOTE)
    sync_account_lots(uow, "default", [position("AAPL", "3")], NOW)
    [again] = lots(uow)
    assert (again.id, again.quantity, again.note) == (lot.id, 3, None)


def test_aggregated_broker_lot_is_never_rewritten_and_new_shares_get_a_new_lot(uow: UnitOfWork) -> None:
    config = DustScanConfig(TradingPolicy(frozenset(), frozenset({"default"})), VENUES)
    broker = FakeBrokerage()
    sync_account_lots(uow, "default", [position("BTC-USD", "0.00004")], NOW)
    scan_dust(uow, broker.latest_price, config, NOW, execute=True)
    first, aggregate = lots(uow)
    assert (first.status, aggregate.kind, aggregate.quantity) == ("dust_aggregated", "aggregate", D("0.00004"))

    sync_account_lots(uow, "default", [position("BTC-USD", "0.00009")], NOW)
    _, _, new = lots(uow)
    assert (new.source, new.status, new.quantity) == ("broker", "open", D("0.00005"))  # 0.00009 - 0.00004 tracked
    assert lots(uow)[0].quantity == D("0.00004")

    scan_dust(uow, broker.latest_price, config, NOW, execute=True)
    assert lots(uow)[1].quantity == D("0.00009")
    result = sync_account_lots(uow, "default", [], NOW)  # dust sold outside dustpan: reported, not rewritten
    assert result.shortfalls == {"BTC-USD": D("0.00009")}
    assert [lot.quantity for lot in lots(uow)] == [D("0.00004"), D("0.00009"), D("0.00005")]


def test_shorts_are_reported_and_one_account_failing_does_not_stop_the_others(uow: UnitOfWork) -> None:
    healthy, failing = FakeBrokerage(), FakeBrokerage()
    healthy.positions = [position("AAPL", "-5"), position("MSFT", "2")]
    failing.unavailable = 1

    def brokerages(account: str) -> Brokerage:
        return healthy if account == "main" else failing

    report = sync_positions(uow, brokerages, ["main", "second"], NOW)
    main, second = report.accounts
    assert (main.account, main.shorts, main.created) == ("main", ["AAPL"], ["MSFT"])
    assert second.error is not None and "503" in second.error
    assert [(lot.account, lot.symbol) for lot in lots(uow)] == [("main", "MSFT")]
