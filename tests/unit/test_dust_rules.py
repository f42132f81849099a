"""Dust rules (models.domain.dust) and where venue rules come from (models.domain.venue_sources)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from models.domain.dust import (
    PENDING_NOTE,
    AggregateStatus,
    aggregate_readiness,
    sale_refusal,
    split_dust,
    top_up_to_sellable,
)
from models.domain.venue import VenueRules
from models.domain.venue_sources import FRACTIONAL_STEP, RuleOverride, apply_override, rules_from_asset

D = Decimal
BTC = VenueRules(whole_shares=False, step=D("0.00001"), min_quantity=D("0.0001"))
WHOLE = VenueRules()
NOTIONAL = VenueRules(whole_shares=False, step=D("0.001"), min_notional=D(10))
PENDING, READY = AggregateStatus.PENDING, AggregateStatus.READY


@pytest.mark.parametrize(
    ("quantity", "rules", "price", "keep", "dust"),
    [
        pytest.param("0.00004", BTC, None, "0", "0.00004", id="below minimum quantity: all dust"),
        pytest.param("0.00012", BTC, None, "0.00012", "0", id="tradable multiple: no dust"),
        pytest.param("0.000125", BTC, None, "0.00012", "0.000005", id="off-step tail only is dust"),
        pytest.param("100.5", WHOLE, None, "100", "0.5", id="a real position keeps its whole shares"),
        pytest.param("0.7", WHOLE, None, "0", "0.7", id="below one whole share"),
        pytest.param("0.05", NOTIONAL, D(100), "0", "0.05", id="below minimum notional"),
        pytest.param("0.05", NOTIONAL, None, "0.05", "0", id="no price: notional unknown is not dust"),
        pytest.param("0", BTC, None, "0", "0", id="empty lot: nothing to sweep"),
    ],
)
def test_split_dust(quantity: str, rules: VenueRules, price: Decimal | None, keep: str, dust: str) -> None:
    split = split_dust(D(quantity), rules, price)
    assert (split.keep, split.dust) == (D(keep), D(dust))
    assert split.keep + split.dust == max(D(quantity), D(0))


def test_aggregate_below_minimum_quantity_is_pending_with_the_waiting_note() -> None:
    readiness = aggregate_readiness(D("0.00008"), BTC, None, PENDING, D("0.05"))
    assert (readiness.status, readiness.sell_quantity, readiness.note) == (PENDING, 0, PENDING_NOTE)


def test_aggregate_reaching_minimum_quantity_is_ready_to_sell_its_tradable_part() -> None:
    readiness = aggregate_readiness(D("0.000115"), BTC, None, PENDING, D("0.05"))
    assert (readiness.status, readiness.sell_quantity) == (READY, D("0.00011"))


@pytest.mark.parametrize(
    ("current", "price", "expected"),
    [
        pytest.param(PENDING, "102", PENDING, id="pending stays pending at +2%"),
        pytest.param(PENDING, "105", READY, id="pending becomes ready at +5%"),
        pytest.param(READY, "98", READY, id="ready stays ready at -2%"),
        pytest.param(READY, "94", PENDING, id="ready falls back below -5%"),
    ],
)
def test_notional_minimum_has_a_hysteresis_band(
    current: AggregateStatus, price: str, expected: AggregateStatus
) -> None:
    # 0.1 at 100 is exactly the minimum notional of 10
    assert aggregate_readiness(D("0.1"), NOTIONAL, D(price), current, D("0.05")).status is expected


def test_ready_inside_the_lower_band_waits_for_the_venue_minimum() -> None:
    assert sale_refusal(D("0.1"), NOTIONAL, D(98)) == "notional is below the minimum 10"
    assert sale_refusal(D("0.1"), NOTIONAL, D(102)) is None
    assert sale_refusal(D("0.1"), NOTIONAL, None) is not None


def test_alpaca_asset_fields_map_to_venue_rules() -> None:
    equity = rules_from_asset(tradable=True, fractionable=False, min_order_size=None, min_trade_increment=None)
    assert equity == VenueRules(whole_shares=True, step=D(1), min_quantity=D(0), min_notional=D(0), tradable=True)
    crypto = rules_from_asset(
        tradable=True, fractionable=True, min_order_size=D("0.000022"), min_trade_increment=D("0.000000001")
    )
    assert (crypto.whole_shares, crypto.step, crypto.min_quantity) == (False, D("0.000000001"), D("0.000022"))
    fractional = rules_from_asset(tradable=False, fractionable=True, min_order_size=None, min_trade_increment=None)
    assert (fractional.step, fractional.tradable) == (FRACTIONAL_STEP, False)
    assert fractional.refusal(D(1), D(1)) == "the venue does not trade this symbol"


def test_override_wins_field_by_field_and_keeps_what_it_leaves_unset() -> None:
    synced = VenueRules(whole_shares=True, step=D(1), min_quantity=D(1), min_notional=D(0), tradable=False)
    merged = apply_override(synced, RuleOverride(whole_shares=False, step=D("0.00001"), min_quantity=D(0)))
    assert merged == VenueRules(
        whole_shares=False, step=D("0.00001"), min_quantity=D(0), min_notional=D(0), tradable=False
    )
    assert apply_override(synced, None) is synced


@pytest.mark.parametrize(
    ("held", "price", "rules", "buy"),
    [
        pytest.param("2", "4", VenueRules(min_quantity=D(3)), "3", id="the buy itself must reach the minimum"),
        pytest.param("2", "4", VenueRules(min_notional=D(10)), "3", id="buy and position both worth >= 10"),
        pytest.param("0.00008", "60000", BTC, "0.0001", id="fractional: the buy at its minimum"),
        pytest.param("2", "4", WHOLE, "0", id="already sellable: no buy"),
        pytest.param("0.5", "4", WHOLE, None, id="a fraction on a whole-share venue: no buy helps"),
        pytest.param("2", "4", VenueRules(tradable=False), None, id="the venue trades nothing"),
    ],
)
def test_top_up_to_sellable_buys_the_least_that_makes_the_position_sellable(
    held: str, price: str, rules: VenueRules, buy: str | None
) -> None:
    found = top_up_to_sellable(D(held), D(price), rules)
    assert found == (None if buy is None else D(buy))
    if found:
        assert rules.refusal(found, D(price)) is None and rules.refusal(D(held) + found, D(price)) is None
