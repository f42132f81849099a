"""Dust scan and aggregation (SPEC 1.3) on real PostgreSQL, with a fake brokerage for assets and prices."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal

import pytest
from sqlalchemy import func, select, text

import tasks.dust_store
from models.db import UnitOfWork
from models.domain.dust import PENDING_NOTE
from models.domain.venue import VenueRules
from models.domain.venue_sources import RuleOverride
from models.tables import Execution, Position, RealizedPnl
from models.tables_ops import Lot, PriceHealth, VenueRuleRow
from tasks.dust import DustScanConfig, ScanReport, scan_dust
from tasks.execution import ExecutionConfig, submit_execution
from tasks.freezes import freeze_symbol, unfreeze_symbol
from tasks.guards import TradingPolicy
from tasks.ports import Asset, BrokerOrder, OrderRequest
from tasks.venues import VenueConfig, sync_venue_rules, venue_rules_for
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 4, 2, 15, 0, tzinfo=UTC)
POLICY = TradingPolicy(frozenset({"AUT-USD"}), frozenset({"default"}))
CONFIG = DustScanConfig(POLICY)
STEP = D("0.00001")


def asset(symbol: str, *, minimum: str, step: str) -> Asset:
    return Asset(symbol, True, True, D(minimum), D(step), D("0.01"))


class FractionalBrokerage(FakeBrokerage):
    """Fills fractional quantities (the shared fake fills whole shares only), in steps of STEP."""

    def _fill(self, request: OrderRequest) -> BrokerOrder:
        filled = (request.quantity * self.fill_ratio).quantize(STEP, rounding=ROUND_DOWN)
        status = "filled" if filled == request.quantity else "canceled"
        return BrokerOrder(
            "order-" + request.client_order_id,
            request.client_order_id,
            request.symbol,
            request.side,
            request.quantity,
            status,
            filled,
            self.price if filled else None,
        )


@pytest.fixture
def broker(uow: UnitOfWork) -> FractionalBrokerage:
    """BTC-USD as Alpaca describes it: fractional, minimum 0.0001, step 0.00001."""
    broker = FractionalBrokerage(price=D(60_000))
    broker.assets = {
        "BTC-USD": asset("BTC-USD", minimum="0.0001", step="0.00001"),
        "ETH-USD": asset("ETH-USD", minimum="0.001", step="0.0001"),
        "AUT-USD": asset("AUT-USD", minimum="1", step="1"),
    }
    return broker


def add_lot(uow: UnitOfWork, quantity: str, symbol: str = "BTC-USD", account: str = "default") -> int:
    with uow:
        lot = Lot(account=account, symbol=symbol, kind="holding", source="broker", quantity=D(quantity), status="open")
        uow.session.add(lot)
        uow.session.flush()
        lot_id = lot.id
        uow.commit()
    return lot_id


def synced(uow: UnitOfWork, broker: FakeBrokerage, config: DustScanConfig = CONFIG) -> None:
    sync_venue_rules(uow, broker, config.venues, NOW)


def scan(
    uow: UnitOfWork, broker: FakeBrokerage, config: DustScanConfig = CONFIG, *, minutes: int = 0, execute: bool = True
) -> ScanReport:
    return scan_dust(uow, broker.latest_price, config, NOW + timedelta(minutes=minutes), execute=execute)


def lots(uow: UnitOfWork, kind: str | None = None) -> list[Lot]:
    with uow:
        query = select(Lot).order_by(Lot.id)
        return list(uow.session.scalars(query.where(Lot.kind == kind) if kind else query))


def executions(uow: UnitOfWork) -> list[Execution]:
    with uow:
        return list(uow.session.scalars(select(Execution).order_by(Execution.seq)))


def test_dust_waits_in_one_aggregate_until_the_minimum_then_sells_once_the_next_cycle(
    uow: UnitOfWork, broker: FakeBrokerage
) -> None:
    first, second = add_lot(uow, "0.00004"), add_lot(uow, "0.00004")
    synced(uow, broker)

    report = scan(uow, broker)  # cycle 1: two lots of 0.00004 < 0.0001
    [aggregate] = lots(uow, "aggregate")
    assert (aggregate.quantity, aggregate.status, aggregate.note) == (D("0.00008"), "dust_pending", PENDING_NOTE)
    originals = lots(uow, "holding")
    assert [(o.id, o.status, o.aggregate_id) for o in originals] == [
        (first, "dust_aggregated", aggregate.id),
        (second, "dust_aggregated", aggregate.id),
    ]
    assert (report.dust_found, report.aggregated, report.pending, report.sales) == (2, 2, 1, [])

    third = add_lot(uow, "0.00003")
    report = scan(uow, broker, minutes=5)  # cycle 2: 0.00011 reaches the minimum: ready, not sold yet
    [aggregate] = lots(uow, "aggregate")
    assert (aggregate.quantity, aggregate.status) == (D("0.00011"), "dust_ready")
    assert lots(uow, "holding")[-1].id == third and lots(uow, "holding")[-1].aggregate_id == aggregate.id
    assert (report.ready, report.sales, executions(uow)) == (1, [], [])

    report = scan(uow, broker, minutes=10)  # cycle 3: sold through the exactly-once execution path
    [sale] = executions(uow)
    assert (sale.source, sale.side, sale.symbol, sale.account) == ("dust_sale", "sell", "BTC-USD", "default")
    assert (sale.quantity, sale.status) == (D("0.00011"), "pending")
    assert sale.quantity % STEP == 0
    assert report.execution_ids == [sale.id]
    [aggregate] = lots(uow, "aggregate")
    assert (aggregate.status, aggregate.execution_id) == ("selling", sale.id)

    again = scan(uow, broker, minutes=10)  # the same cycle run again (a redelivered Beat tick)
    assert (again.sales, len(executions(uow))) == ([], 1)


def test_settled_dust_sale_marks_the_aggregate_sold(uow: UnitOfWork, broker: FakeBrokerage) -> None:
    sale = _ready_then_sold(uow, broker, ["0.00006", "0.00005"])
    submit_execution(uow, broker.by_account, sale.id, ExecutionConfig(D(1), 30, 3), NOW)
    [aggregate] = lots(uow, "aggregate")
    assert aggregate.status == "sold"
    assert [lot.status for lot in lots(uow, "holding")] == ["dust_aggregated", "dust_aggregated"]
    assert executions(uow)[0].filled_quantity == D("0.00011")


def test_dust_sale_of_a_booked_position_settles_and_books_its_pnl(uow: UnitOfWork, broker: FakeBrokerage) -> None:
    with uow:
        uow.session.add(Position(account="default", symbol="BTC-USD", quantity=D("0.00011"), average_price=D(50_000)))
        uow.commit()
    sale = _ready_then_sold(uow, broker, ["0.00006", "0.00005"])
    submit_execution(uow, broker.by_account, sale.id, ExecutionConfig(D(1), 30, 3), NOW)
    with uow:
        [pnl] = uow.session.scalars(select(RealizedPnl)).all()
        book = uow.session.get(Position, ("default", "BTC-USD"))
    assert (pnl.reason, pnl.quantity, pnl.pnl) == ("dust_sale", D("0.00011"), D("1.1"))
    assert book is not None and book.quantity == 0
    assert lots(uow, "aggregate")[0].status == "sold"


def test_unfilled_part_of_a_dust_sale_stays_tracked_as_a_new_lot(uow: UnitOfWork, broker: FakeBrokerage) -> None:
    sale = _ready_then_sold(uow, broker, ["0.00006", "0.00006"])
    broker.fill_ratio = D("0.5")
    submit_execution(uow, broker.by_account, sale.id, ExecutionConfig(D(1), 30, 3), NOW)
    [aggregate] = lots(uow, "aggregate")
    remainder = lots(uow, "holding")[-1]
    assert (aggregate.status, aggregate.quantity) == ("sold", D("0.00012"))
    assert (remainder.source, remainder.status, remainder.quantity) == ("remainder", "open", D("0.00006"))
    scan(uow, broker, minutes=20)  # the remainder is dust again and starts a new aggregate
    assert [(a.status, a.quantity) for a in lots(uow, "aggregate")] == [
        ("sold", D("0.00012")),
        ("dust_pending", D("0.00006")),
    ]


def _ready_then_sold(uow: UnitOfWork, broker: FakeBrokerage, quantities: list[str]) -> Execution:
    for quantity in quantities:
        add_lot(uow, quantity)
    synced(uow, broker)
    scan(uow, broker)
    [sale] = scan(uow, broker, minutes=5).sales
    assert sale.execution_id is not None
    return executions(uow)[0]


def test_tradable_lot_with_an_off_step_tail_keeps_its_shares_and_only_the_tail_is_aggregated(
    uow: UnitOfWork, broker: FakeBrokerage
) -> None:
    lot_id = add_lot(uow, "0.500004")
    synced(uow, broker)
    scan(uow, broker)
    original, tail = lots(uow, "holding")
    [aggregate] = lots(uow, "aggregate")
    assert (original.id, original.status, original.quantity) == (lot_id, "open", D("0.5"))
    assert (tail.status, tail.quantity, tail.aggregate_id) == ("dust_aggregated", D("0.000004"), aggregate.id)
    assert tail.note == f"Dust split from lot #{lot_id}"


def notional_config() -> DustScanConfig:
    return DustScanConfig(POLICY, VenueConfig(overrides={"ETH-USD": RuleOverride(min_notional=D(10))}))


def test_price_wobbling_around_the_notional_minimum_does_not_flip_pending_and_ready(
    uow: UnitOfWork, broker: FakeBrokerage
) -> None:
    config = notional_config()
    add_lot(uow, "0.1", "ETH-USD")  # 0.1 ETH: the minimum notional of 10 is reached at a price of 100
    synced(uow, broker, config)

    def cycle(minute: int, price: str) -> tuple[str, int]:
        broker.price = D(price)
        report = scan(uow, broker, config, minutes=minute)
        [aggregate] = [a for a in lots(uow, "aggregate") if a.status != "sold"]
        return aggregate.status, len(report.sales)

    assert cycle(0, "98") == ("dust_pending", 0)
    assert [cycle(m, p) for m, p in [(5, "102"), (10, "98"), (15, "102"), (20, "98")]] == [("dust_pending", 0)] * 4
    assert cycle(25, "106") == ("dust_ready", 0)  # 10.6 >= 10 * 1.05
    # Ready now: -2% keeps it ready (not below 10 * 0.95) but the venue minimum makes the sale wait.
    assert [cycle(m, p) for m, p in [(30, "98"), (35, "98")]] == [("dust_ready", 0)] * 2
    assert cycle(40, "102") == ("selling", 1)
    assert len(executions(uow)) == 1


def test_recorded_price_is_preferred_and_a_stale_one_falls_back_to_the_broker(
    uow: UnitOfWork, broker: FakeBrokerage
) -> None:
    config = notional_config()
    broker.price = D(1000)  # 0.1 ETH is worth 100 at the broker's price: not dust
    add_lot(uow, "0.1", "ETH-USD")
    synced(uow, broker, config)
    with uow:
        uow.session.add(PriceHealth(symbol="ETH-USD", last_price=D(50), last_price_at=NOW - timedelta(minutes=11)))
        uow.commit()
    assert scan(uow, broker, config, execute=False).dust_found == 0  # 11 minutes old: the broker's price
    assert scan(uow, broker, config, minutes=-2, execute=False).dust_found == 1  # 9 minutes old: 0.1 * 50 < 10


def test_restricted_symbols_are_never_aggregated_or_sold(uow: UnitOfWork, broker: FakeBrokerage) -> None:
    add_lot(uow, "0.5", "AUT-USD")
    synced(uow, broker)
    for minute in (0, 5, 10):
        report = scan(uow, broker, minutes=minute)
        assert report.skipped == {"restricted": {"AUT-USD"}}
    assert [(lot.status, lot.quantity) for lot in lots(uow)] == [("open", D("0.5"))]
    assert executions(uow) == []


def test_symbol_whose_venue_rules_were_never_synced_is_left_alone(uow: UnitOfWork, broker: FakeBrokerage) -> None:
    add_lot(uow, "0.5")  # under the whole-share default 0.5 BTC would look like dust
    report = scan(uow, broker)
    assert (report.dust_found, report.aggregated, report.skipped) == (1, 0, {"venue rules not synced yet": {"BTC-USD"}})
    synced(uow, broker)
    assert scan(uow, broker, minutes=5).dust_found == 0


def test_frozen_symbol_is_not_sold_until_unfrozen(uow: UnitOfWork, broker: FakeBrokerage) -> None:
    add_lot(uow, "0.00006")
    add_lot(uow, "0.00005")
    synced(uow, broker)
    scan(uow, broker)
    assert lots(uow, "aggregate")[0].status == "dust_ready"
    freeze_symbol(uow, "BTC-USD", "operator", NOW)
    add_lot(uow, "0.00002")
    report = scan(uow, broker, minutes=5)
    assert (report.sales, report.skipped) == ([], {"frozen": {"BTC-USD"}})
    assert lots(uow, "holding")[-1].status == "open"  # no dust action at all while frozen
    assert executions(uow) == []
    unfreeze_symbol(uow, "BTC-USD", NOW)
    assert len(scan(uow, broker, minutes=10).sales) == 1
    assert lots(uow, "holding")[-1].status == "open"  # waits for the sale in flight to settle


def test_dry_run_reports_what_it_would_do_and_changes_nothing(uow: UnitOfWork, broker: FakeBrokerage) -> None:
    for quantity in ("0.00006", "0.00005"):
        add_lot(uow, quantity)
    synced(uow, broker)
    scan(uow, broker)  # ready now
    add_lot(uow, "0.00001")
    before = [(lot.id, lot.status, lot.quantity) for lot in lots(uow)]
    report = scan(uow, broker, minutes=5, execute=False)
    assert report.dry_run and [(s.symbol, s.quantity, s.execution_id) for s in report.sales] == [
        ("BTC-USD", D("0.00011"), None)
    ]
    assert [(lot.id, lot.status, lot.quantity) for lot in lots(uow)] == before
    assert executions(uow) == []


def test_scan_failing_halfway_changes_nothing(
    uow: UnitOfWork, broker: FakeBrokerage, monkeypatch: pytest.MonkeyPatch
) -> None:
    for quantity in ("0.00006", "0.00005"):
        add_lot(uow, quantity)
    synced(uow, broker)
    scan(uow, broker)
    add_lot(uow, "0.00003")
    before = [(lot.id, lot.status, lot.quantity, lot.aggregate_id) for lot in lots(uow)]

    def killed(*_: object) -> None:
        raise RuntimeError("worker killed")

    # After the sale was created and the new lot moved, before the aggregates are written.
    monkeypatch.setattr(tasks.dust_store, "write_aggregates", killed)
    with pytest.raises(RuntimeError):
        scan(uow, broker, minutes=5)
    assert [(lot.id, lot.status, lot.quantity, lot.aggregate_id) for lot in lots(uow)] == before
    assert executions(uow) == []


def test_two_scans_at_once_make_one_aggregate_and_at_most_one_sale(
    clean_database: str, uow: UnitOfWork, broker: FakeBrokerage
) -> None:
    for quantity in ("0.00004", "0.00004", "0.00003"):
        add_lot(uow, quantity)
    synced(uow, broker)
    start = threading.Barrier(2)

    def one_scan(_: int) -> ScanReport:
        start.wait()
        return scan(UnitOfWork(clean_database), broker)

    for _ in range(2):  # first both aggregate the same lots, then both try to sell the ready aggregate
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(one_scan, range(2)))
    [aggregate] = lots(uow, "aggregate")
    assert aggregate.quantity == D("0.00011")
    assert all(lot.aggregate_id == aggregate.id for lot in lots(uow, "holding"))
    with uow:
        sales = uow.session.scalar(select(func.count()).select_from(Execution).where(Execution.source == "dust_sale"))
    assert sales == 1
    assert aggregate.status == "selling"


VENUES = VenueConfig(
    overrides={"BTC-USD": RuleOverride(whole_shares=False, step=D("0.00001"), min_quantity=D("0.0001"))}
)


def venue_rows(uow: UnitOfWork) -> dict[str, VenueRuleRow]:
    with uow:
        return {row.symbol: row for row in uow.session.scalars(select(VenueRuleRow))}


def test_venue_sync_maps_alpaca_asset_fields_and_the_config_override_wins(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    broker.assets = {
        "AAPL": Asset("AAPL", True, False, None, None, D("0.01")),
        "BTC-USD": Asset("BTC-USD", True, True, D("0.000022"), D("0.000000001"), D("1")),
        "HALT": Asset("HALT", False, True, D("0.001"), D("0.001"), D("0.01")),
    }
    for symbol in ("AAPL", "HALT", "NOPE"):
        add_lot(uow, "1", symbol)
    report = sync_venue_rules(uow, broker, VENUES, NOW)  # BTC-USD matters because it is overridden
    assert (report.synced, report.overridden, report.unknown) == (["AAPL", "HALT"], ["BTC-USD"], ["NOPE"])

    synced = venue_rows(uow)
    assert set(synced) == {"AAPL", "BTC-USD", "HALT"}
    aapl, btc, halt = synced["AAPL"], synced["BTC-USD"], synced["HALT"]
    assert (aapl.whole_shares, aapl.step, aapl.min_quantity, aapl.source) == (True, 1, 0, "broker")
    assert (halt.tradable, halt.whole_shares, halt.step, halt.min_quantity) == (False, False, D("0.001"), D("0.001"))
    assert (btc.whole_shares, btc.step, btc.min_quantity, btc.source) == (False, D("0.00001"), D("0.0001"), "override")
    assert btc.price_increment == 1

    with uow:
        rules = venue_rules_for(uow.session, ["AAPL", "BTC-USD", "HALT", "NOPE"], VENUES)
    assert rules["BTC-USD"] == VenueRules(whole_shares=False, step=D("0.00001"), min_quantity=D("0.0001"))
    assert rules["NOPE"] == VenueRules()  # never synced: the configured default (whole shares)
    assert rules["HALT"].refusal(D(1), D(1)) == "the venue does not trade this symbol"


def test_override_wins_over_a_synced_row_when_read(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    broker.assets = {"ETH-USD": Asset("ETH-USD", True, True, D("0.001"), D("0.0001"), D("0.01"))}
    add_lot(uow, "1", "ETH-USD")
    sync_venue_rules(uow, broker, VenueConfig(), NOW)
    later = VenueConfig(overrides={"ETH-USD": RuleOverride(min_notional=D(10))})  # config changed since the sync
    with uow:
        rules = venue_rules_for(uow.session, ["ETH-USD"], later)["ETH-USD"]
    assert (rules.step, rules.min_quantity, rules.min_notional) == (D("0.0001"), D("0.001"), D(10))


def test_arrays_reach_postgresql_exactly(uow: UnitOfWork) -> None:
    texts = ["a,b", 'quote " and \\ backslash', "{braces}", None, "NULL"]
    with uow:
        back = uow.session.execute(
            text("SELECT CAST(:t AS text[]), CAST(:n AS numeric[])"),
            {"t": tasks.dust_store._array(texts), "n": tasks.dust_store._array([D("0.00001"), D("1E-18"), None])},
        ).one()
    assert back == (texts, [D("0.00001"), D("1E-18"), None])
