"""Conformance: Alpaca's own answers, as recorded (tests/fixtures/alpaca_bodies.json, each with
its source and any edit named), through the real adapter and ``settle()``.

The bodies come from alpaca-py's and other clients' tests, Alpaca's docs, and error bodies quoted
in public issue threads; where no recording of a status exists (replaced, done_for_day, a crypto
order) the fixture is an edited copy and says so in its ``edited`` field.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.domain.execution_state import ExecutionStatus, settle
from tasks.execution import follow_replacements
from tasks.ports import (
    AccountRefused,
    BrokerageError,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    MalformedAnswer,
    OrderRequest,
    RateLimited,
    TemporaryError,
    UnresolvedOrder,
)
from workers.brokerage.alpaca import AlpacaBrokerage

FIXTURES = {
    entry["name"]: entry
    for entry in json.loads((Path(__file__).parents[1] / "fixtures" / "alpaca_bodies.json").read_text())
}
D = Decimal
ORDER = OrderRequest("dp-conformance", "AAPL", "buy", D(3))


def body_text(entry: dict[str, Any]) -> str:
    return json.dumps(entry["body"])


def serving(
    routes: dict[str, tuple[int, str, dict[str, str]]], now: float = 1_700_000_000.0
) -> AlpacaBrokerage:  # float-ok
    """An adapter whose every request is answered by path (the first route that the path starts with)."""

    def answer(request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode()
        for prefix, (status, text, headers) in routes.items():
            if target.startswith(prefix):
                return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(404, text="404 page not found")

    return AlpacaBrokerage(
        "http://alpaca.invalid", "k", "s", D(1), transport=httpx.MockTransport(answer), clock=lambda: now
    )


def fixture_reply(name: str, **overrides: Any) -> tuple[int, str, dict[str, str]]:
    entry = FIXTURES[name]
    body = entry["body"]
    if overrides:
        body = {**body, **overrides}
    return entry["status"], json.dumps(body), entry.get("headers") or {}


# -- orders in every status we have, read and settled -----------------------------------------

ORDER_OUTCOMES = {
    # name: (our status for an execution of the order's quantity, or the error reading it raises)
    "order_accepted_market_qty_number_commission": ExecutionStatus.SUBMITTED,
    "order_accepted_limit_price_number": ExecutionStatus.SUBMITTED,
    "order_filled_xom": ExecutionStatus.FILLED,
    "order_filled_limit_sell_gnl_from_trade_update": ExecutionStatus.FILLED,
    "order_canceled_from_trade_update": ExecutionStatus.CANCELLED,
    "order_crypto_btcusd_EDITED": ExecutionStatus.SUBMITTED,
    # dustpan never sends a notional order; reading one (qty null) holds the execution, never settles it
    "order_accepted_notional_filled_avg_price_null": MalformedAnswer,
    "order_done_for_day_EDITED": MalformedAnswer,
    "position_close_returns_order": MalformedAnswer,
}


@pytest.mark.parametrize("name", sorted(ORDER_OUTCOMES))
def test_recorded_order_is_read_exactly_and_settled_by_evidence(name: str) -> None:
    expected = ORDER_OUTCOMES[name]
    adapter = serving({"/v2/orders/": fixture_reply(name)})
    if isinstance(expected, type):
        with pytest.raises(expected):
            adapter.get_order("x")
        return
    order = adapter.get_order("x")
    raw = FIXTURES[name]["body"]
    assert order.filled_quantity == D(str(raw["filled_qty"]))
    assert isinstance(order.quantity, Decimal) and isinstance(order.filled_quantity, Decimal)
    assert settle(order.status, order.quantity, order.filled_quantity).status is expected


def test_null_average_price_reads_as_none_not_zero() -> None:
    order = serving({"/v2/orders/": fixture_reply("order_accepted_market_qty_number_commission")}).get_order("x")
    assert order.filled_average_price is None


def test_filled_average_price_is_exact_decimal() -> None:
    order = serving({"/v2/orders/": fixture_reply("order_filled_limit_sell_gnl_from_trade_update")}).get_order("x")
    assert order.filled_average_price == D("7.1831") and str(order.filled_average_price) == "7.1831"


def test_crypto_order_keeps_its_pair_spelling() -> None:
    assert serving({"/v2/orders/": fixture_reply("order_crypto_btcusd_EDITED")}).get_order("x").symbol == "BTC/USD"


@pytest.mark.parametrize("status", ["done_for_day", "calculated", "replaced", "pending_new", "held"])
def test_statuses_that_are_not_final_keep_the_execution_working(status: str) -> None:
    order = serving({"/v2/orders/": fixture_reply("order_filled_xom", status=status, filled_qty="0")}).get_order("x")
    assert settle(order.status, order.quantity, order.filled_quantity).status is ExecutionStatus.SUBMITTED


def test_replaced_order_is_followed_to_the_replacement_that_holds_the_fill() -> None:
    # The recorded "replaced" body is a notional order; dustpan's are by quantity, so qty is set.
    replaced = fixture_reply("order_replaced_EDITED", qty="4", notional=None)
    replacement_id = FIXTURES["order_replaced_EDITED"]["body"]["replaced_by"]
    adapter = serving(
        {
            "/v2/orders:by_client_order_id": replaced,
            f"/v2/orders/{replacement_id}": fixture_reply("order_filled_xom", id=replacement_id),
        }
    )
    original = adapter.get_order_by_client_order_id("dp-x")
    assert original is not None and (original.status, original.replaced_by) == ("replaced", replacement_id)

    final = follow_replacements(adapter, original, D(4))

    assert (final.id, final.status, final.filled_quantity) == (replacement_id, "filled", D(4))


def test_replaced_order_that_had_filled_is_held_for_a_person() -> None:
    replaced = fixture_reply("order_replaced_EDITED", qty="4", notional=None, filled_qty="1")
    adapter = serving({"/v2/orders:by_client_order_id": replaced})
    original = adapter.get_order_by_client_order_id("dp-x")
    assert original is not None
    with pytest.raises(UnresolvedOrder, match="a person must tell"):
        follow_replacements(adapter, original, D(4))


def test_replacement_for_another_quantity_is_held_for_a_person() -> None:
    replaced = fixture_reply("order_replaced_EDITED", qty="4", notional=None)
    replacement_id = FIXTURES["order_replaced_EDITED"]["body"]["replaced_by"]
    adapter = serving(
        {
            "/v2/orders:by_client_order_id": replaced,
            f"/v2/orders/{replacement_id}": fixture_reply("order_filled_xom", id=replacement_id, qty="5"),
        }
    )
    original = adapter.get_order_by_client_order_id("dp-x")
    assert original is not None
    with pytest.raises(UnresolvedOrder, match="not 4"):
        follow_replacements(adapter, original, D(4))


# -- positions, assets, account, prices -------------------------------------------------------


def test_long_and_short_positions_are_signed_exactly() -> None:
    adapter = serving(
        {
            "/v2/positions": (
                200,
                json.dumps([FIXTURES["position_long_equity"]["body"], FIXTURES["position_short_equity_xlk"]["body"]]),
                {},
            )
        }
    )
    long, short = adapter.list_positions()
    assert (long.symbol, long.quantity, long.average_entry_price) == ("AAPL", D(5), D("100.0"))
    assert (short.symbol, short.quantity, short.market_value) == ("XLK", D(-24), D("-2011.44"))


def test_crypto_position_glued_symbol_is_the_same_symbol_as_the_pair() -> None:
    # No recorded crypto position was found; this is the long equity recording with Alpaca's
    # documented crypto fields (symbol "BTCUSD", asset_class "crypto").
    crypto = {**FIXTURES["position_long_equity"]["body"], "symbol": "BTCUSD", "asset_class": "crypto", "qty": "0.0123"}
    [position] = serving({"/v2/positions": (200, json.dumps([crypto]), {})}).list_positions()
    assert (position.symbol, position.quantity) == ("BTC/USD", D("0.0123"))


def test_assets_with_and_without_minimums() -> None:
    adapter = serving(
        {
            "/v2/assets/AAPL": fixture_reply("asset_equity_aapl_no_min_order_size"),
            "/v2/assets/BTC%2FUSD": fixture_reply("asset_crypto_btcusd_with_increments"),
        }
    )
    equity = adapter.get_asset("AAPL")
    assert equity is not None and (equity.min_order_size, equity.min_trade_increment) == (None, None)
    crypto = adapter.get_asset("BTC-USD")  # asked in a config spelling, sent as the pair
    assert crypto is not None
    assert (crypto.symbol, crypto.min_order_size, crypto.min_trade_increment) == ("BTC/USD", D("0.0001"), D("0.0001"))


def test_legacy_glued_crypto_asset_reads_as_the_pair() -> None:
    asset = serving({"/v2/assets/": fixture_reply("asset_crypto_btcusd_legacy_no_increments")}).get_asset("BTC/USD")
    assert asset is not None and asset.symbol == "BTC/USD"


def test_account_reads_negative_cash_exactly() -> None:
    account = serving({"/v2/account": fixture_reply("account")}).get_account()
    assert (account.cash, account.buying_power) == (D("-23140.2"), D("262113.632"))


def test_stock_latest_trade_price_is_exact() -> None:
    price = serving({"/v2/stocks/AAPL/trades/latest": fixture_reply("latest_trade_stock_single_symbol")}).latest_price(
        "AAPL"
    )
    assert price == D("134.7")


@pytest.mark.parametrize("symbol", ["BTC/USD", "BTC-USD"])
def test_crypto_latest_trade_comes_from_the_crypto_endpoint(symbol: str) -> None:
    adapter = serving({"/v1beta3/crypto/us/latest/trades": fixture_reply("latest_trades_crypto_btcusd")})
    assert adapter.latest_price(symbol) == D(57527)


# -- error bodies: what each is evidence of, by method ---------------------------------------

POST_ERRORS: dict[str, type[BrokerageError]] = {
    "error_403_insufficient_buying_power": InsufficientFunds,
    "error_403_forbidden": AccountRefused,
    "error_403_not_allowed_to_short": AccountRefused,
    "error_422_us_equity_orders_not_allowed": AccountRefused,
    "error_422_client_order_id_must_be_unique": DuplicateClientOrderId,
    "error_422_qty_is_required": InvalidOrder,
    "error_422_request_body_format_invalid": InvalidOrder,
    "error_422_potential_wash_trade": InvalidOrder,
    "error_422_order_id_is_missing": InvalidOrder,
    "error_404_asset_not_found": InvalidOrder,
    "error_429_rate_limit": RateLimited,
}


@pytest.mark.parametrize("name", sorted(POST_ERRORS))
def test_error_answer_to_an_order_post_is_classified_by_evidence(name: str) -> None:
    expected = POST_ERRORS[name]
    with pytest.raises(expected) as caught:
        serving({"/v2/orders": fixture_reply(name)}).submit_order(ORDER)
    if expected is InvalidOrder:  # a plain refusal, not one of its louder relatives
        assert type(caught.value) is InvalidOrder
    assert isinstance(caught.value, DuplicateClientOrderId) == (expected is DuplicateClientOrderId)


def test_duplicate_recognized_by_409_and_by_reworded_text() -> None:
    for status, message in ((409, "conflict"), (422, "client order id already exists")):
        adapter = serving({"/v2/orders": (status, json.dumps({"code": 40010001, "message": message}), {})})
        with pytest.raises(DuplicateClientOrderId):
            adapter.submit_order(ORDER)


def test_a_proxys_403_page_on_post_is_an_unknown_outcome() -> None:
    adapter = serving({"/v2/orders": (403, "<html><body>403 Forbidden</body></html>", {})})
    with pytest.raises(TemporaryError):
        adapter.submit_order(ORDER)


READ_ERRORS = [name for name in FIXTURES if name.startswith("error_") and FIXTURES[name]["status"] != 404]


@pytest.mark.parametrize("name", sorted(READ_ERRORS))
def test_error_answer_to_an_order_lookup_is_never_a_refusal(name: str) -> None:
    with pytest.raises(TemporaryError) as caught:
        serving({"/v2/orders:by_client_order_id": fixture_reply(name)}).get_order_by_client_order_id("dp-x")
    assert not isinstance(caught.value, (InvalidOrder, AccountRefused, DuplicateClientOrderId))


def test_alpacas_404_on_a_lookup_means_never_ordered() -> None:
    adapter = serving({"/v2/orders:by_client_order_id": fixture_reply("error_404_order_not_found")})
    assert adapter.get_order_by_client_order_id("dp-x") is None


def test_rate_limit_wait_comes_from_x_ratelimit_reset() -> None:
    # No recorded 429 carried headers; Alpaca documents X-RateLimit-Limit/-Remaining/-Reset (unix s).
    status, text, _ = fixture_reply("error_429_rate_limit")
    headers = {"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000007"}
    adapter = serving({"/v2/orders": (status, text, headers)}, now=1_700_000_000.0)
    with pytest.raises(RateLimited) as caught:
        adapter.submit_order(ORDER)
    assert caught.value.retry_after == 7


def test_every_fixture_names_its_source() -> None:
    assert all(entry["source"] for entry in FIXTURES.values())
    assert all("EDITED" not in name or entry["edited"] for name, entry in FIXTURES.items())
