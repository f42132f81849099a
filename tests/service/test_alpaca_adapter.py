"""The Alpaca adapter against a real HTTP stub: wire format, error translation, exact decimals."""

from __future__ import annotations

import json
import socket
import time
from decimal import Decimal

import httpx
import pytest

from tasks.ports import (
    BrokerageMisconfigured,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    MalformedAnswer,
    OrderRequest,
    RateLimited,
    TemporaryError,
)
from tests.service.conftest import ALPACA_TIMEOUT
from tests.support.alpaca_stub import AlpacaStub
from workers.brokerage.alpaca import AlpacaBrokerage

TIMEOUT = ALPACA_TIMEOUT


def order(client_order_id: str = "coid-1", symbol: str = "AAPL", quantity: str = "3") -> OrderRequest:
    return OrderRequest(client_order_id=client_order_id, symbol=symbol, side="buy", quantity=Decimal(quantity))


def test_constructing_the_adapter_does_no_io() -> None:
    AlpacaBrokerage("http://127.0.0.1:9", "k", "s", TIMEOUT).close()


def test_submitted_order_fills_and_is_found_by_client_order_id(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    submitted = broker.submit_order(order())

    found = broker.get_order_by_client_order_id("coid-1")

    assert submitted.status == "filled"
    assert submitted.filled_quantity == Decimal("3")
    assert submitted.filled_average_price == Decimal("100")
    assert found == submitted
    assert broker.get_order(submitted.id) == submitted
    assert stub.posts_per_client_order_id["coid-1"] == 1


def test_market_order_is_sent_with_qty_as_a_string(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    broker.submit_order(order(quantity="12"))

    (post,) = [r for r in stub.requests if r.method == "POST"]
    assert post.path == "/v2/orders"
    assert json.loads(post.body) == {
        "symbol": "AAPL",
        "qty": "12",
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": "coid-1",
    }


def test_fill_price_and_quantities_round_trip_exactly_as_decimal(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.prices["BRK.B"] = Decimal("123.456789")

    filled = broker.submit_order(order(symbol="BRK.B", quantity="7"))

    assert filled.filled_average_price == Decimal("123.456789")
    assert str(filled.filled_average_price) == "123.456789"
    assert (filled.quantity, filled.filled_quantity) == (Decimal("7"), Decimal("7"))
    assert isinstance(filled.filled_average_price, Decimal)


def test_lookup_of_unknown_client_order_id_returns_none(broker: AlpacaBrokerage) -> None:
    assert broker.get_order_by_client_order_id("never-sent") is None


def test_lookup_against_a_wrong_base_url_is_not_mistaken_for_a_missing_order(stub: AlpacaStub) -> None:
    # A plain 404 page means misconfiguration; None would invite the caller to send again.
    with (
        AlpacaBrokerage(stub.url + "/v2", stub.key_id, stub.secret_key, TIMEOUT) as adapter,
        pytest.raises(BrokerageMisconfigured),
    ):
        adapter.get_order_by_client_order_id("coid-1")


def test_duplicate_client_order_id_raises_duplicate_and_keeps_the_first_order(
    stub: AlpacaStub, broker: AlpacaBrokerage
) -> None:
    first = broker.submit_order(order())

    with pytest.raises(DuplicateClientOrderId, match="client_order_id must be unique"):
        broker.submit_order(order(quantity="5"))

    assert broker.get_order_by_client_order_id("coid-1") == first
    assert stub.posts_per_client_order_id["coid-1"] == 2
    assert len(stub.orders) == 1


def test_server_error_is_temporary_and_nothing_is_stored(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.fail_next("500")

    with pytest.raises(TemporaryError):
        broker.submit_order(order())

    assert broker.get_order_by_client_order_id("coid-1") is None


def test_rate_limit_raises_rate_limited_with_retry_after(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.retry_after_seconds = 7
    stub.fail_next("429")

    with pytest.raises(RateLimited) as caught:
        broker.submit_order(order())

    assert isinstance(caught.value, RateLimited)
    assert caught.value.retry_after == 7


def test_rate_limit_without_retry_after_header_carries_none(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.retry_after_seconds = None
    stub.fail_next("429")

    with pytest.raises(RateLimited) as caught:
        broker.ping()

    assert caught.value.retry_after is None


def test_timeout_before_accepting_is_temporary_and_leaves_no_order(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.fail_next("timeout")

    with pytest.raises(TemporaryError):
        broker.submit_order(order())

    assert broker.get_order_by_client_order_id("coid-1") is None


def test_timeout_after_accept_is_temporary_but_lookup_finds_the_accepted_order(
    stub: AlpacaStub, broker: AlpacaBrokerage
) -> None:
    stub.fail_next("timeout_after_accept")
    started = time.monotonic()

    with pytest.raises(TemporaryError):
        broker.submit_order(order())

    assert time.monotonic() - started < stub.stall_seconds
    found = broker.get_order_by_client_order_id("coid-1")
    assert found is not None
    assert found.status == "filled"
    assert stub.posts_per_client_order_id["coid-1"] == 1


def test_a_held_symbol_hangs_again_after_a_release(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    """The benches hang a symbol for a run, release it, and hang it again for the next run."""
    for n in (1, 2):
        stub.hold(["HANG"])
        with pytest.raises(TemporaryError):  # accepted; the answer never came within the client's timeout
            broker.submit_order(order(f"coid-{n}", symbol="HANG"))
        stub.release_held()

        assert stub.held_posts["HANG"] == n
        assert broker.get_order_by_client_order_id(f"coid-{n}") is not None
    assert broker.submit_order(order("coid-3", symbol="HANG")).status == "filled"  # released: answered


def test_unreachable_broker_is_temporary() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        AlpacaBrokerage(f"http://127.0.0.1:{port}", "k", "s", TIMEOUT) as adapter,
        pytest.raises(TemporaryError),
    ):
        adapter.ping()


def test_trading_url_without_a_scheme_is_operational_not_temporary() -> None:
    with (
        AlpacaBrokerage("paper-api.alpaca.markets", "k", "s", TIMEOUT) as adapter,
        pytest.raises(BrokerageMisconfigured),
    ):
        adapter.ping()


def test_wrong_api_keys_raise_operational_error(stub: AlpacaStub) -> None:
    with AlpacaBrokerage(stub.url, stub.key_id, "wrong-secret", TIMEOUT) as adapter:
        with pytest.raises(BrokerageMisconfigured, match="401"):
            adapter.submit_order(order())
        with pytest.raises(BrokerageMisconfigured):
            adapter.ping()
    assert stub.orders == {}


def test_ping_succeeds_against_a_healthy_broker(broker: AlpacaBrokerage) -> None:
    broker.ping()


def test_malformed_body_is_an_unknown_outcome_not_a_refusal(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.fail_next("malformed", count=2)

    with pytest.raises(MalformedAnswer, match="non-JSON") as caught:
        broker.submit_order(order())
    assert isinstance(caught.value, TemporaryError)  # retried after a lookup, never settled
    with pytest.raises(MalformedAnswer):
        broker.get_order_by_client_order_id("coid-1")


def test_buy_beyond_buying_power_raises_insufficient_funds(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.buying_power = Decimal("250")

    with pytest.raises(InsufficientFunds, match="insufficient buying power"):
        broker.submit_order(order(quantity="3"))

    assert stub.orders == {}


def test_unknown_symbol_raises_invalid_order_with_alpaca_message(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.unknown_symbols.add("NOPE")

    with pytest.raises(InvalidOrder, match='asset "NOPE" not found') as caught:
        broker.submit_order(order(symbol="NOPE"))

    assert not isinstance(caught.value, (DuplicateClientOrderId, InsufficientFunds))


def test_partial_fill_reports_whole_shares_filled_and_the_rest_canceled(
    stub: AlpacaStub, broker: AlpacaBrokerage
) -> None:
    stub.partial_fill_ratio = Decimal("0.5")

    partial = broker.submit_order(order(quantity="7"))

    assert (partial.status, partial.quantity, partial.filled_quantity) == ("canceled", 7, 3)


def test_rejected_symbol_reports_rejected_with_nothing_filled(stub: AlpacaStub, broker: AlpacaBrokerage) -> None:
    stub.reject_symbols.add("HALT")

    rejected = broker.submit_order(order(symbol="HALT"))

    assert rejected.status == "rejected"
    assert rejected.filled_quantity == Decimal("0")
    assert rejected.filled_average_price is None


@pytest.mark.parametrize("quantity", ["0", "-1", "NaN"])
def test_invalid_quantity_fails_fast_without_a_request(
    stub: AlpacaStub, broker: AlpacaBrokerage, quantity: str
) -> None:
    with pytest.raises(InvalidOrder):
        broker.submit_order(order(quantity=quantity))

    assert stub.requests == []


# Field-level parsing: answers the stub never gives, served by an in-process transport.

GOOD_ORDER = {
    "id": "5f1c2b7e-0000-4000-8000-000000000001",
    "client_order_id": "coid-1",
    "symbol": "AAPL",
    "side": "buy",
    "qty": "3",
    "filled_qty": "3",
    "filled_avg_price": "100.01",
    "status": "filled",
}


def adapter_answering(status: int, body: str, headers: dict[str, str] | None = None) -> AlpacaBrokerage:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, text=body, headers=headers))
    return AlpacaBrokerage("http://alpaca.invalid", "k", "s", TIMEOUT, transport=transport)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("qty", None),
        ("filled_qty", "three"),
        ("filled_avg_price", "NaN"),
        ("filled_qty", True),
        ("qty", "-1"),
        ("status", None),
        ("id", 42),
    ],
)
def test_order_with_missing_or_invalid_field_is_malformed(field: str, value: object) -> None:
    adapter = adapter_answering(200, json.dumps({**GOOD_ORDER, field: value}))

    with pytest.raises(MalformedAnswer, match="malformed order from broker"):
        adapter.get_order("5f1c2b7e-0000-4000-8000-000000000001")


def test_numeric_json_decimals_are_read_exactly_not_through_float() -> None:
    body = json.dumps(GOOD_ORDER).replace('"100.01"', "0.1000000000000000055511151231257827")

    parsed = adapter_answering(200, body).get_order("x")

    assert parsed.filled_average_price == Decimal("0.1000000000000000055511151231257827")


def test_non_finite_json_constant_is_malformed() -> None:
    body = json.dumps(GOOD_ORDER).replace('"100.01"', "NaN")

    with pytest.raises(MalformedAnswer):
        adapter_answering(200, body).get_order("x")


def test_not_found_on_submit_is_an_invalid_order() -> None:
    adapter = adapter_answering(404, '{"code": 40410000, "message": "asset not found"}')

    with pytest.raises(InvalidOrder, match="asset not found"):
        adapter.submit_order(order())


def test_other_client_error_is_an_invalid_order_with_alpaca_message() -> None:
    adapter = adapter_answering(400, '{"code": 40010000, "message": "request body format is invalid"}')

    with pytest.raises(InvalidOrder, match="request body format is invalid"):
        adapter.submit_order(order())


def test_unknown_broker_order_id_is_an_unknown_outcome() -> None:
    # The id came from Alpaca itself: a 404 on that read proves nothing, so it is retried.
    adapter = adapter_answering(404, '{"code": 40410000, "message": "order not found"}')

    with pytest.raises(TemporaryError, match="order not found"):
        adapter.get_order("5f1c2b7e-0000-4000-8000-000000000001")


def test_server_error_with_html_body_is_still_temporary() -> None:
    with pytest.raises(TemporaryError):
        adapter_answering(503, "<html>Service Unavailable</html>").submit_order(order())


def test_latest_trade_price_is_read_exactly_from_market_data() -> None:
    with AlpacaStub() as stub:
        stub.prices["AAPL"] = Decimal("187.4321")
        adapter = AlpacaBrokerage(stub.url, stub.key_id, stub.secret_key, Decimal("0.5"), data_url=stub.url)
        assert adapter.latest_price("AAPL") == Decimal("187.4321")
        assert stub.requests[-1].path == "/v2/stocks/AAPL/trades/latest"
