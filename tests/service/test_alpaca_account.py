"""The Alpaca adapter's account, positions and assets calls against the real HTTP stub."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tasks.ports import (
    BrokerageMisconfigured,
    InsufficientFunds,
    InvalidOrder,
    MalformedAnswer,
    OrderRequest,
    RateLimited,
    TemporaryError,
)
from tests.service.conftest import ALPACA_TIMEOUT
from tests.support.alpaca_stub import AlpacaStub, position_json
from workers.brokerage.alpaca import AlpacaBrokerage

D = Decimal
TIMEOUT = ALPACA_TIMEOUT


def buy(broker: AlpacaBrokerage, symbol: str, quantity: str, client_order_id: str = "coid-1") -> None:
    broker.submit_order(OrderRequest(client_order_id, symbol, "buy", D(quantity)))


def adapter_answering(status: int, body: str) -> AlpacaBrokerage:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, text=body))
    return AlpacaBrokerage("http://alpaca.invalid", "k", "s", TIMEOUT, transport=transport)


# -- account ---------------------------------------------------------------------------------


def test_account_reports_cash_buying_power_and_equity_exactly(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.cash = D("12345.678901234")
    stub.prices["AAPL"] = D("187.4321")
    buy(broker, "AAPL", "2")

    account = broker.get_account()

    assert account.cash == D("12345.678901234") - D("374.8642")
    assert account.buying_power == account.cash
    assert account.equity == D("12345.678901234")
    assert all(isinstance(v, Decimal) for v in (account.cash, account.buying_power, account.equity))


def test_account_buying_power_is_alpacas_not_cash(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.buying_power = D("250.000000001")

    assert broker.get_account().buying_power == D("250.000000001")


def test_margin_account_owing_cash_is_read_not_refused() -> None:
    body = json.dumps({"cash": "-1500.25", "buying_power": "0", "equity": "-12.5"})

    assert adapter_answering(200, body).get_account().cash == D("-1500.25")


def test_account_numbers_sent_as_json_numbers_are_read_exactly() -> None:
    body = '{"cash": 0.1000000000000000055511151231257827, "buying_power": "1", "equity": 2}'

    assert adapter_answering(200, body).get_account().cash == D("0.1000000000000000055511151231257827")


@pytest.mark.parametrize(
    "body", ['{"cash": "1", "buying_power": "1"}', '{"cash": "1", "buying_power": "x", "equity": "1"}', "[]"]
)
def test_account_with_missing_or_unreadable_field_is_malformed(body: str) -> None:
    with pytest.raises(MalformedAnswer, match="malformed account from broker"):
        adapter_answering(200, body).get_account()


# -- positions -------------------------------------------------------------------------------


def test_fractional_fill_becomes_a_position_with_exact_decimals(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.prices["AAPL"] = D("187.4321")
    buy(broker, "AAPL", "0.00004")

    (position,) = broker.list_positions()

    assert (position.symbol, position.quantity) == ("AAPL", D("0.00004"))
    assert position.average_entry_price == D("187.4321")
    assert position.current_price == D("187.4321")
    assert position.market_value == D("0.007497284")


def test_no_positions_is_an_empty_list(broker: AlpacaBrokerage) -> None:
    assert broker.list_positions() == []


@pytest.mark.parametrize("qty_on_the_wire", ["-5", "5"])
def test_short_position_is_negative_whether_or_not_alpaca_signs_qty(
    stub: AlpacaStub, broker: AlpacaBrokerage, qty_on_the_wire: str
) -> None:
    stub.positions["TSLA"] = {**position_json("TSLA", D("-5"), D("200"), D("190.5")), "qty": qty_on_the_wire}

    (short,) = broker.list_positions()

    assert short.quantity == D("-5")
    assert short.market_value == D("-952.5")


def test_position_without_prices_keeps_them_unknown() -> None:
    body = json.dumps([{"symbol": "AAPL", "qty": "3", "side": "long", "current_price": None}])

    (position,) = adapter_answering(200, body).list_positions()

    assert (position.quantity, position.current_price, position.market_value) == (D(3), None, None)


@pytest.mark.parametrize(
    "changes",
    [{"side": "long", "qty": "-5"}, {"side": "sideways"}, {"qty": None}, {"qty": "NaN"}, {"avg_entry_price": "-1"}],
)
def test_position_with_contradictory_or_unreadable_field_is_malformed(changes: dict[str, Any]) -> None:
    body = json.dumps([{**position_json("AAPL", D(5), D(10), D(11)), **changes}])

    with pytest.raises(MalformedAnswer, match="malformed position from broker"):
        adapter_answering(200, body).list_positions()


def test_positions_answer_that_is_not_a_list_is_malformed() -> None:
    with pytest.raises(MalformedAnswer, match="malformed positions"):
        adapter_answering(200, '{"symbol": "AAPL"}').list_positions()


# -- close_position --------------------------------------------------------------------------


def test_closing_a_whole_position_sells_all_of_it(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    buy(broker, "AAPL", "3")

    order = broker.close_position("AAPL")

    assert (order.side, order.quantity, order.status, order.filled_quantity) == ("sell", 3, "filled", 3)
    assert stub.requests[-1].path == "/v2/positions/AAPL"
    assert broker.list_positions() == []


def test_partial_close_sends_the_exact_decimal_quantity(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    buy(broker, "AAPL", "3")

    order = broker.close_position("AAPL", D("0.00004"))

    assert (stub.requests[-1].method, stub.requests[-1].path) == ("DELETE", "/v2/positions/AAPL?qty=0.00004")
    assert order.quantity == D("0.00004")
    assert [p.quantity for p in broker.list_positions()] == [D("2.99996")]


def test_close_quantity_is_sent_in_fixed_point_not_exponent(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    buy(broker, "AAPL", "300")

    broker.close_position("AAPL", D("1E+2"))

    assert stub.requests[-1].path == "/v2/positions/AAPL?qty=100"


def test_closing_a_short_position_buys_it_back(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.positions["TSLA"] = position_json("TSLA", D("-5"), D("200"), D("190"))

    order = broker.close_position("TSLA")

    assert (order.side, order.filled_quantity) == ("buy", 5)
    assert broker.list_positions() == []


def test_closing_without_a_position_is_an_invalid_order(broker: AlpacaBrokerage) -> None:
    with pytest.raises(InvalidOrder, match="position does not exist") as caught:
        broker.close_position("AAPL")

    assert not isinstance(caught.value, InsufficientFunds)


def test_closing_more_than_held_is_insufficient_funds(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    buy(broker, "AAPL", "3")

    with pytest.raises(InsufficientFunds, match="insufficient qty available"):
        broker.close_position("AAPL", D("3.5"))

    assert [p.quantity for p in broker.list_positions()] == [3]


@pytest.mark.parametrize("quantity", ["0", "-1", "NaN", "Infinity"])
def test_close_with_invalid_quantity_fails_fast_without_a_request(
    stub: AlpacaStub, broker: AlpacaBrokerage, quantity: str
) -> None:
    with pytest.raises(InvalidOrder):
        broker.close_position("AAPL", D(quantity))

    assert stub.requests == []


def test_timeout_after_close_accepted_is_temporary_but_the_position_is_gone(
    stub: AlpacaStub, broker: AlpacaBrokerage
) -> None:
    buy(broker, "AAPL", "3")
    stub.fail_next("timeout_after_accept")

    with pytest.raises(TemporaryError):
        broker.close_position("AAPL")

    assert broker.list_positions() == []  # a timeout is not evidence that nothing happened


def test_close_refused_for_what_it_is_carries_alpacas_message() -> None:
    adapter = adapter_answering(422, '{"code": 40010001, "message": "qty must be > 0"}')

    with pytest.raises(InvalidOrder, match="qty must be > 0"):
        adapter.close_position("AAPL", D(1))


# -- get_asset -------------------------------------------------------------------------------


def test_crypto_asset_increments_round_trip_exactly(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.assets["BTC/USD"] = {
        "class": "crypto",
        "min_order_size": "0.000012",
        "min_trade_increment": "0.000000001",
        "price_increment": "1",
    }

    asset = broker.get_asset("BTC/USD")

    assert stub.requests[-1].path == "/v2/assets/BTC%2FUSD"
    assert asset is not None
    assert (asset.symbol, asset.tradable, asset.fractionable) == ("BTC/USD", True, True)
    assert asset.min_order_size == D("0.000012")
    assert asset.min_trade_increment == D("0.000000001")
    assert format(asset.min_trade_increment, "f") == "0.000000001"
    assert asset.price_increment == D("1")


def test_equity_asset_without_size_fields_maps_them_to_none(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.assets["AAPL"] = {}
    stub.assets["MSFT"] = {"min_order_size": None, "min_trade_increment": None, "price_increment": None}

    for symbol in ("AAPL", "MSFT"):
        asset = broker.get_asset(symbol)
        assert asset is not None
        assert (asset.min_order_size, asset.min_trade_increment, asset.price_increment) == (None, None, None)


def test_untradable_whole_share_asset_is_reported_as_such(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.assets["HALT"] = {"tradable": False, "fractionable": False, "status": "inactive"}

    asset = broker.get_asset("HALT")

    assert asset is not None
    assert (asset.tradable, asset.fractionable) == (False, False)


def test_unknown_asset_is_none(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.assets["NOPE"] = {}
    stub.unknown_symbols.add("NOPE")

    assert broker.get_asset("NOPE") is None
    assert broker.get_asset("NEVER-LISTED") is None


@pytest.mark.parametrize(
    "changes",
    [{"tradable": "true"}, {"fractionable": None}, {"min_trade_increment": "0"}, {"price_increment": "abc"}],
)
def test_asset_with_unreadable_field_is_malformed(changes: dict[str, Any]) -> None:
    body = json.dumps({"symbol": "AAPL", "tradable": True, "fractionable": True, **changes})

    with pytest.raises(MalformedAnswer, match="malformed asset from broker"):
        adapter_answering(200, body).get_asset("AAPL")


@pytest.mark.parametrize("call", ["get_asset", "close_position"])
def test_bare_404_page_means_a_wrong_base_url_not_a_missing_thing(stub: AlpacaStub, call: str) -> None:
    with AlpacaBrokerage(stub.url + "/v2", stub.key_id, stub.secret_key, TIMEOUT) as adapter:
        stub.positions["AAPL"] = position_json("AAPL", D(1), D(1), D(1))
        with pytest.raises(BrokerageMisconfigured, match="trading_url"):
            getattr(adapter, call)("AAPL")


# -- faults, for every new call --------------------------------------------------------------

CALLS: dict[str, Callable[[AlpacaBrokerage], object]] = {
    "get_account": lambda broker: broker.get_account(),
    "list_positions": lambda broker: broker.list_positions(),
    "close_position": lambda broker: broker.close_position("AAPL"),
    "get_asset": lambda broker: broker.get_asset("AAPL"),
}


@pytest.fixture(params=sorted(CALLS))
def call(request: pytest.FixtureRequest, stub: AlpacaStub) -> Callable[[AlpacaBrokerage], object]:
    # Every call would succeed without the fault, so the fault alone explains the error.
    stub.positions["AAPL"] = position_json("AAPL", D(3), D(100), D(100))
    stub.assets["AAPL"] = {}
    return CALLS[request.param]


def test_rate_limit_is_rate_limited_with_retry_after(
    stub: AlpacaStub, broker: AlpacaBrokerage, call: Callable[[AlpacaBrokerage], object]
) -> None:
    stub.retry_after_seconds = 7
    stub.fail_next("429")

    with pytest.raises(RateLimited) as caught:
        call(broker)

    assert caught.value.retry_after == 7
    call(broker)  # the fault was one answer, not a broken adapter


def test_server_error_is_temporary_and_changes_nothing(
    stub: AlpacaStub, broker: AlpacaBrokerage, call: Callable[[AlpacaBrokerage], object]
) -> None:
    stub.fail_next("500")

    with pytest.raises(TemporaryError) as caught:
        call(broker)

    assert not isinstance(caught.value, RateLimited)
    assert [p.quantity for p in broker.list_positions()] == [3]


def test_timeout_is_temporary_and_does_not_wait_for_the_broker(
    stub: AlpacaStub, broker: AlpacaBrokerage, call: Callable[[AlpacaBrokerage], object]
) -> None:
    stub.fail_next("timeout")
    started = time.monotonic()

    with pytest.raises(TemporaryError):
        call(broker)

    assert time.monotonic() - started < stub.stall_seconds


def test_malformed_body_is_operational(
    stub: AlpacaStub, broker: AlpacaBrokerage, call: Callable[[AlpacaBrokerage], object]
) -> None:
    stub.fail_next("malformed")

    with pytest.raises(MalformedAnswer, match="non-JSON"):
        call(broker)


def test_wrong_api_keys_are_operational(stub: AlpacaStub, call: Callable[[AlpacaBrokerage], object]) -> None:
    with (
        AlpacaBrokerage(stub.url, stub.key_id, "wrong-secret", TIMEOUT) as adapter,
        pytest.raises(BrokerageMisconfigured, match="401"),
    ):
        call(adapter)

    assert [p["qty"] for p in stub.positions.values()] == ["3"]
