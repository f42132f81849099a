"""plan_execution: the one execution open portions call for, and what stays open."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from models.domain.accumulation import Portion, plan_execution
from models.domain.quantities import Side

D = Decimal
quantities = st.integers(min_value=1, max_value=3 * 10**18).map(lambda units: D(units).scaleb(-18))
signed_quantities = st.tuples(quantities, st.booleans()).map(lambda qs: qs[0] if qs[1] else -qs[0])


def portions(values: list[Decimal]) -> list[Portion]:
    return [Portion("trade", f"t{i}", v) for i, v in enumerate(values)]


def test_net_below_threshold_plans_nothing() -> None:
    assert plan_execution(portions([D("0.6"), D("0.39")]), D(1)) is None


def test_buy_takes_whole_part_and_splits_the_crossing_trade() -> None:
    plan = plan_execution(portions([D("0.6"), D("-0.3"), D("0.8")]), D(1))
    assert plan is not None and plan.side is Side.BUY and plan.quantity == 1
    assert [(a.portion.ref, a.taken) for a in plan.allocations] == [
        ("t1", D("-0.3")),
        ("t0", D("0.6")),
        ("t2", D("0.7")),
    ]
    assert plan.allocations[-1].left == D("0.1")


def test_large_sell_becomes_one_execution_of_its_whole_part() -> None:
    plan = plan_execution(portions([D("-3.7")]), D(1))
    assert plan is not None and plan.side is Side.SELL and plan.quantity == 3
    assert plan.allocations[0].taken == D(-3) and plan.allocations[0].left == D("-0.7")


def test_threshold_of_five_waits_for_five_shares() -> None:
    assert plan_execution(portions([D("4.99")]), D(5)) is None
    plan = plan_execution(portions([D("4.99"), D("0.02")]), D(5))
    assert plan is not None and plan.quantity == 5


@given(st.lists(signed_quantities, min_size=1, max_size=40), st.sampled_from([D(1), D(2), D(5)]))
def test_allocations_are_exact_and_leave_the_fractional_residual(values: list[Decimal], threshold: Decimal) -> None:
    net = sum(values, D(0))
    plan = plan_execution(portions(values), threshold)
    if abs(net) < threshold:
        assert plan is None
        return
    assert plan is not None
    assert sum((a.taken for a in plan.allocations), D(0)) == plan.signed_quantity
    assert plan.quantity == int(abs(net)) and plan.quantity > 0
    left = {a.portion.ref: a.left for a in plan.allocations}
    remaining = [left.get(p.ref, p.quantity) for p in portions(values)]
    assert sum(remaining, D(0)) == net - plan.signed_quantity
    assert abs(sum(remaining, D(0))) < 1
    for portion, rest in zip(portions(values), remaining, strict=True):
        assert abs(rest) <= abs(portion.quantity)
        assert rest == 0 or (rest > 0) == (portion.quantity > 0)  # never flips a trade's sign
        assert rest == 0 or (rest > 0) == (net > 0)  # what stays open leans the net's way
    assert len({a.portion.ref for a in plan.allocations}) == len(plan.allocations)
