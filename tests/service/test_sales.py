"""Notional sells with the dust cap, on real PostgreSQL (SPEC 1.8)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from models.db import UnitOfWork
from models.domain.sales import quote_sale
from models.domain.venue import VenueRules
from models.tables import DustLedger, Execution, Position
from tasks.audit import audit_books
from tasks.execution import ExecutionConfig, submit_execution
from tasks.guards import Refused, TradingPolicy
from tasks.sales import ledger_volume, place_notional_sale
from tests.conftest import truncate_all
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 4, 1, 15, 0, tzinfo=UTC)
POLICY = TradingPolicy(frozenset({"AUT-USD"}), frozenset({"default"}))
WHOLE = VenueRules(whole_shares=True)


def hold(uow: UnitOfWork, symbol: str, quantity: str, price: str = "25") -> None:
    with uow:
        uow.session.add(Position(account="default", symbol=symbol, quantity=D(quantity), average_price=D(price)))
        uow.commit()


def sell(uow: UnitOfWork, notional: str, price: str, cap: str, rules: VenueRules = WHOLE, symbol: str = "AAPL"):  # type: ignore[no-untyped-def]
    return place_notional_sale(
        uow, POLICY, rules, symbol=symbol, notional=D(notional), account="default", price=D(price), cap=D(cap), now=NOW
    )


def test_quote_of_100_at_30_is_3_shares_90_proceeds_10_dust() -> None:
    quote = quote_sale(D("100.00"), D("30.00"), WHOLE, D("2"))
    assert (quote.quantity, quote.proceeds, quote.dust) == (3, D("90.00"), D("10.00"))
    assert not quote.within_cap
    assert (quote.nearest_below, quote.nearest_above) == (D("92.00"), D("120.00"))


def test_dust_above_the_cap_is_refused_with_the_contract_payload(uow: UnitOfWork) -> None:
    hold(uow, "AAPL", "10")
    with pytest.raises(Refused) as refused:
        sell(uow, "100.00", "30.00", cap="2")
    assert answered_status(refused.value) == 422
    payload = refused.value.payload()
    assert set(payload) == {"error", "cap", "would_be_dust", "message"}
    assert (payload["error"], payload["cap"], payload["would_be_dust"]) == ("dust_cap_exceeded", "2.00", "10.00")
    assert "reduce" in payload["message"] and "split" in payload["message"]
    with uow:
        assert uow.session.scalar(select(func.count()).select_from(Execution)) == 0  # nothing written


def ledger(uow: UnitOfWork) -> list[DustLedger]:
    with uow:
        return list(uow.session.scalars(select(DustLedger).order_by(DustLedger.id)))


def settle(uow: UnitOfWork, execution_id: object, broker: FakeBrokerage) -> None:
    submit_execution(uow, broker.by_account, execution_id, ExecutionConfig(D(1), 30, 3), NOW)  # type: ignore[arg-type]


def test_dust_within_the_cap_is_accepted_and_ledgered_when_it_fills(uow: UnitOfWork) -> None:
    hold(uow, "AAPL", "10")
    placed = sell(uow, "91.00", "30.00", cap="2")
    assert (placed.quote.quantity, placed.quote.proceeds, placed.quote.dust) == (3, D("90.00"), D("1.00"))
    assert (placed.execution.side, placed.execution.quantity, placed.execution.source) == ("sell", 3, "sell")
    assert ledger(uow) == []  # a quote is not a sale: nothing is ledgered before the fill
    settle(uow, placed.execution.id, FakeBrokerage(price=D("30.00")))
    [row] = ledger(uow)
    assert (row.requested_notional, row.proceeds, row.dust) == (D("91.00"), D("90.00"), D("1.00"))
    assert (row.unfilled_notional, row.slippage) == (0, 0)


def test_rejected_sale_writes_no_ledger_entry(uow: UnitOfWork) -> None:
    hold(uow, "AAPL", "10")
    broker = FakeBrokerage(price=D("30.00"))
    broker.reject_symbols.add("AAPL")
    settle(uow, sell(uow, "91.00", "30.00", cap="2").execution.id, broker)
    assert ledger(uow) == []


def test_partial_fill_ledgers_its_real_proceeds_and_the_unfilled_notional(uow: UnitOfWork) -> None:
    hold(uow, "AAPL", "10")
    placed = sell(uow, "91.00", "30.00", cap="2")  # 3 shares quoted at 30.00
    settle(uow, placed.execution.id, FakeBrokerage(fill_ratio=D("0.34"), price=D("29.50")))  # 1 share at 29.50
    [row] = ledger(uow)
    assert (row.quantity, row.price, row.proceeds, row.dust) == (1, D("29.50"), D("29.50"), D("1.00"))
    assert (row.unfilled_notional, row.slippage) == (D("60.00"), D("0.50"))
    assert row.requested_notional == row.proceeds + row.dust + row.unfilled_notional + row.slippage
    audit = audit_books(uow, D(1), NOW)
    assert audit.ok and audit.as_json()["unbalanced_sales"] == []


def test_cap_zero_accepts_any_dust(uow: UnitOfWork) -> None:
    hold(uow, "AAPL", "10")
    assert sell(uow, "100.00", "30.00", cap="0").quote.dust == D("10.00")


def test_fractional_venue_sells_in_steps_of_its_increment(uow: UnitOfWork) -> None:
    hold(uow, "BTC-USD", "1")
    rules = VenueRules(whole_shares=False, step=D("0.001"))
    placed = sell(uow, "100.00", "30000.00", cap="10", rules=rules, symbol="BTC-USD")
    assert (placed.quote.quantity, placed.quote.proceeds, placed.quote.dust) == (D("0.003"), D("90.00"), D("10.00"))
    placed = sell(uow, "100.00", "333.33", cap="0.01", rules=rules, symbol="BTC-USD")
    assert placed.quote.quantity == D("0.3") and placed.quote.dust == D("0.001")


@pytest.mark.parametrize(
    ("symbol", "status", "error"),
    [("AUT-USD", 422, "symbol_restricted"), ("NOPE", 409, "insufficient_position")],
)
def test_sales_that_cannot_happen_are_refused_and_name_why(
    uow: UnitOfWork, symbol: str, status: int, error: str
) -> None:
    with pytest.raises(Refused) as refused:
        sell(uow, "100.00", "30.00", cap="0", symbol=symbol)
    assert (answered_status(refused.value), refused.value.error) == (status, error)


def test_in_flight_sales_count_against_the_position(uow: UnitOfWork) -> None:
    hold(uow, "AAPL", "5")
    sell(uow, "90.00", "30.00", cap="0")  # 3 shares promised
    with pytest.raises(Refused) as refused:
        sell(uow, "90.00", "30.00", cap="0")  # 3 more: only 2 left
    assert refused.value.error == "insufficient_position"


amounts = st.decimals(min_value=D("0.01"), max_value=D("100000"), places=2)
prices = st.decimals(min_value=D("0.01"), max_value=D("5000"), places=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(amounts, prices, st.booleans()), min_size=1, max_size=15))
def test_every_accepted_sale_keeps_requested_equal_proceeds_plus_dust(database_url: str, sales: list) -> None:  # type: ignore[type-arg]
    uow = UnitOfWork(database_url)
    truncate_all(database_url)
    with uow:
        uow.session.add(Position(account="default", symbol="AAPL", quantity=D(10**12), average_price=D(1)))
        uow.commit()
    accepted = []
    for notional, price, fractional in sales:
        rules = VenueRules(whole_shares=False, step=D("0.0001")) if fractional else WHOLE
        try:
            placed = sell(uow, str(notional), str(price), cap="5", rules=rules)
        except Refused as refused:
            assert refused.error in ("dust_cap_exceeded", "not_tradable")
            continue
        assert placed.quote.requested == placed.quote.proceeds + placed.quote.dust
        assert 0 <= placed.quote.dust <= 5
        accepted.append(notional)
    with uow:
        quoted = uow.session.scalars(select(Execution.requested_notional).where(Execution.source == "sell")).all()
    assert sorted(quoted) == sorted(accepted)  # every accepted sale keeps its request until it fills
    assert ledger_volume(uow).sales == 0


def answered_status(refused: Refused) -> int:
    """The HTTP status the API answers for this refusal (the one table at the edge)."""
    from workers.api_orders import REFUSAL_STATUS

    return REFUSAL_STATUS.get(refused.error, 422)
