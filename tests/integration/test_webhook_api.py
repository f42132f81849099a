"""The signed trade webhook and the operator endpoints against the real API process (SPEC section 3).

A refused request gets its status and leaves the books untouched; an accepted one is stored
exactly. One API process serves the module (the books are truncated before every test); the
tests that need other settings start their own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.conftest import Services
from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books, fleet_env
from tests.support.fleet import Fleet
from workers.webhook import sign

Headers = dict[str, Any]  # str values, or bytes for a header httpx must not encode as ASCII
DEFAULT_MAX_BODY = 1_048_576
OMIT = object()  # trade(field=OMIT) leaves the field out


@pytest.fixture(scope="module")
def api(services: Services, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("webhook-api")
    fleet = Fleet(fleet_env(database_url, services.broker_url, home / "data"), home)
    fleet.start_api()
    yield fleet
    fleet.stop()


@pytest.fixture
def client(api: Fleet, books: Books, broker_url: str) -> Iterator[httpx.Client]:
    """A client of the module's API over freshly truncated books and an empty Redis."""
    with httpx.Client(base_url=api.api_url, timeout=30) as http:
        yield http


def trade(n: int = 0, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": f"t-{n}",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "1.25",
        "price": "231.40",
        "executed_at": "2026-11-02T14:30:00.000001+00:00",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not OMIT}


def body_of(*trades: dict[str, Any]) -> bytes:
    return json.dumps({"trades": list(trades)}).encode()


def now_early_in_second() -> int:
    """Unix seconds, taken early in a second, so that the server reads the same second."""
    if time.time() % 1 > 0.5:  # float-ok: clock reading, not money
        time.sleep(1 - time.time() % 1)
    return int(time.time())


def signed_headers(body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> Headers:
    stamp = str(now_early_in_second() if timestamp is None else timestamp)
    return {"X-Dustpan-Timestamp": stamp, "X-Dustpan-Signature": sign(secret, stamp, body)}


def deliver(client: httpx.Client, body: bytes, headers: Headers | None = None) -> httpx.Response:
    return client.post("/webhooks/trades", content=body, headers=signed_headers(body) if headers is None else headers)


def assert_nothing_stored(books: Books) -> None:
    assert books.value("SELECT count(*) FROM trades") == 0
    assert books.value("SELECT count(*) FROM accumulators") == 0


def operator(client: httpx.Client, path: str) -> dict[str, Any]:
    response = client.get(path, headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 200, response.text
    return dict(response.json())


# --- 401: the signature or its timestamp -----------------------------------------------------

VALID = body_of(trade())


def _without(header: str) -> Callable[[bytes], tuple[bytes, Headers]]:
    def build(body: bytes) -> tuple[bytes, Headers]:
        headers = signed_headers(body)
        del headers[header]
        return body, headers

    return build


def _tampered(body: bytes) -> tuple[bytes, Headers]:
    headers = signed_headers(body)
    position = body.index(b'"1.25"') + 1
    return body[:position] + b"9" + body[position + 1 :], headers  # "1.25" -> "9.25": one byte


def _skewed(seconds: int) -> Callable[[bytes], tuple[bytes, Headers]]:
    return lambda body: (body, signed_headers(body, timestamp=now_early_in_second() + seconds))


def _with_signature(make: Callable[[bytes, str], str]) -> Callable[[bytes], tuple[bytes, Headers]]:
    def build(body: bytes) -> tuple[bytes, Headers]:
        headers = signed_headers(body)
        headers["X-Dustpan-Signature"] = make(body, headers["X-Dustpan-Timestamp"])
        return body, headers

    return build


def _other_timestamp(body: bytes) -> tuple[bytes, Headers]:
    stamp = now_early_in_second()
    return body, {
        "X-Dustpan-Timestamp": str(stamp),
        "X-Dustpan-Signature": sign(WEBHOOK_SECRET, str(stamp - 1), body),
    }


def _non_ascii_digit_timestamp(body: bytes) -> tuple[bytes, Headers]:
    # b"\xb2" reads as "\xb2" (SUPERSCRIPT TWO) in latin-1, the encoding of HTTP headers, and
    # "\xb2".isdigit() is True.
    return body, {"X-Dustpan-Timestamp": b"\xb2", "X-Dustpan-Signature": sign(WEBHOOK_SECRET, "2", body)}


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(_without("X-Dustpan-Signature"), id="missing signature header"),
        pytest.param(_without("X-Dustpan-Timestamp"), id="missing timestamp header"),
        pytest.param(_tampered, id="one body byte tampered"),
        pytest.param(_with_signature(lambda b, ts: sign("not-the-secret", ts, b)), id="wrong secret"),
        pytest.param(_skewed(-301), id="timestamp 301 s old"),
        pytest.param(_skewed(+301), id="timestamp 301 s ahead"),
        pytest.param(_other_timestamp, id="signature of another timestamp"),
        pytest.param(
            _with_signature(lambda b, ts: sign(WEBHOOK_SECRET, ts, b).removeprefix("v1=")), id="no v1= scheme"
        ),
        pytest.param(_with_signature(lambda b, ts: "v1=" + "0" * 64), id="wrong digest"),
        pytest.param(_with_signature(lambda b, ts: ""), id="empty signature header"),
        pytest.param(
            lambda body: (body, {**signed_headers(body), "X-Dustpan-Timestamp": "2026-11-02T14:30:00Z"}),
            id="timestamp not unix seconds",
        ),
        pytest.param(
            _non_ascii_digit_timestamp,
            id="timestamp with a non-ASCII digit",
        ),
    ],
)
def test_unauthentic_delivery_is_refused_with_401_and_nothing_stored(
    client: httpx.Client, books: Books, build: Callable[[bytes], tuple[bytes, Headers]]
) -> None:
    body, headers = build(VALID)
    response = deliver(client, body, headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_signature"
    assert_nothing_stored(books)


# --- 413: the body size ----------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid payload grown to exactly size bytes with JSON whitespace."""
    body = body_of(trade())
    return body + b" " * (size - len(body))


def _chunks(body: bytes, size: int = 65_536) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")])
def test_body_over_the_default_limit_is_refused_with_413_and_nothing_stored(
    client: httpx.Client, books: Books, chunked: bool
) -> None:
    body = padded(DEFAULT_MAX_BODY + 1)
    headers = signed_headers(body)
    content: bytes | Iterator[bytes] = _chunks(body) if chunked else body
    response = client.post("/webhooks/trades", content=content, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"
    assert_nothing_stored(books)


def test_body_limit_setting_accepts_exactly_the_limit_and_refuses_one_byte_more(
    make_fleet: Callable[..., Fleet], books: Books
) -> None:
    fleet = make_fleet(DUSTPAN_WEBHOOK__MAX_BODY_BYTES="2048")
    fleet.start_api()
    with httpx.Client(base_url=fleet.api_url, timeout=30) as http:
        too_big = deliver(http, padded(2049))
        assert too_big.status_code == 413, too_big.text
        assert_nothing_stored(books)
        at_limit = deliver(http, padded(2048))
    assert at_limit.status_code == 202, at_limit.text
    assert books.value("SELECT count(*) FROM trades") == 1


# --- 422: the payload ------------------------------------------------------------------------

NO_FIELD = None  # the body as a whole is wrong: there is no field to name


def _raw(text: str) -> bytes:
    return text.encode()


def _with_raw_quantity(number: str) -> bytes:
    """A JSON number, not a string, in the quantity (json.dumps would go through float)."""
    return body_of(trade(quantity="QTY")).replace(b'"QTY"', number.encode())


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param(body_of(trade(quantity="-1")), ["trades", 0, "quantity"], id="negative quantity"),
        pytest.param(body_of(trade(quantity="0")), ["trades", 0, "quantity"], id="zero quantity"),
        pytest.param(body_of(trade(quantity="0.000")), ["trades", 0, "quantity"], id="zero with decimals"),
        pytest.param(body_of(trade(quantity="NaN")), ["trades", 0, "quantity"], id="NaN quantity string"),
        pytest.param(body_of(trade(quantity="Infinity")), ["trades", 0, "quantity"], id="infinite quantity"),
        pytest.param(_with_raw_quantity("NaN"), NO_FIELD, id="NaN quantity number"),
        pytest.param(body_of(trade(quantity="1" * 40)), ["trades", 0, "quantity"], id="40-digit quantity"),
        pytest.param(
            body_of(trade(quantity="0.1234567890123456789")),
            ["trades", 0, "quantity"],
            id="19 decimal places",
        ),
        pytest.param(_with_raw_quantity("1" * 40), ["trades", 0, "quantity"], id="40-digit quantity number"),
        pytest.param(body_of(trade(quantity=True)), ["trades", 0, "quantity"], id="boolean quantity"),
        pytest.param(body_of(trade(quantity="one")), ["trades", 0, "quantity"], id="quantity not a number"),
        pytest.param(body_of(trade(price="0")), ["trades", 0, "price"], id="zero price"),
        pytest.param(body_of(trade(venue="NYSE")), ["trades", 0, "venue"], id="unknown field"),
        pytest.param(body_of(trade(price=OMIT)), ["trades", 0, "price"], id="missing field"),
        pytest.param(body_of(trade(side="hold")), ["trades", 0, "side"], id="unknown side"),
        pytest.param(body_of(trade(symbol="aapl")), ["trades", 0, "symbol"], id="lowercase symbol"),
        pytest.param(
            body_of(trade(executed_at="2026-11-02T14:30:00")), ["trades", 0, "executed_at"], id="no time zone"
        ),
        pytest.param(body_of(trade(executed_at="2026-11-02")), ["trades", 0, "executed_at"], id="date without time"),
        pytest.param(body_of(trade(0), trade(1, quantity="0")), ["trades", 1, "quantity"], id="valid then invalid"),
        pytest.param(body_of(), ["trades"], id="empty trades list"),
        pytest.param(body_of(*(trade(n) for n in range(1001))), ["trades"], id="1001 trades"),
        pytest.param(_raw('{"trades": "AAPL"}'), ["trades"], id="trades not a list"),
        pytest.param(_raw('{"orders": []}'), ["orders"], id="unknown top-level field"),
        pytest.param(_raw("[]"), NO_FIELD, id="JSON array body"),
        pytest.param(_raw("trades=AAPL"), NO_FIELD, id="non-JSON body"),
        pytest.param(b"", NO_FIELD, id="empty body"),
        pytest.param(b"\xff\xfe{}", NO_FIELD, id="not UTF-8"),
        pytest.param(_raw("[" * 100_000 + "]" * 100_000), NO_FIELD, id="deeply nested JSON"),
        pytest.param(
            body_of(trade(quantity="1e1000000")),
            ["trades", 0, "quantity"],
            id="quantity exponent beyond Decimal range",
        ),
        pytest.param(
            _with_raw_quantity("1e1000000"),
            ["trades", 0, "quantity"],
            id="quantity number exponent beyond Decimal range",
        ),
    ],
)
def test_invalid_payload_is_refused_whole_with_422_naming_the_field(
    client: httpx.Client, books: Books, body: bytes, loc: list[object] | None
) -> None:
    response = deliver(client, body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_payload"
    assert answer["details"], answer
    if loc is not NO_FIELD:
        assert ".".join(map(str, loc)) in [detail["field"] for detail in answer["details"]], answer
    assert_nothing_stored(books)


# --- 202: accepted, duplicates, conflicts ----------------------------------------------------


def test_valid_delivery_is_accepted_and_its_redelivery_counts_as_duplicates(client: httpx.Client, books: Books) -> None:
    body = body_of(trade(0), trade(1, side="sell", quantity="0.000000000000000001"), trade(2, symbol="MSFT"))
    first = deliver(client, body)
    assert first.status_code == 202, first.text
    assert first.json() == {"accepted": 3, "duplicates": 0, "conflicts": []}
    again = deliver(client, body)  # a fresh timestamp and signature over the same trades
    assert again.status_code == 202, again.text
    assert again.json() == {"accepted": 0, "duplicates": 3, "conflicts": []}
    assert books.value("SELECT count(*) FROM trades") == 3


def test_known_id_with_another_quantity_is_a_conflict_and_the_stored_trade_is_unchanged(
    client: httpx.Client, books: Books
) -> None:
    assert deliver(client, body_of(trade(7, quantity="1.25"))).status_code == 202
    response = deliver(client, body_of(trade(7, quantity="2.5")))
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 0, "duplicates": 0, "conflicts": ["t-7"]}
    assert Decimal(operator(client, "/trades/t-7")["quantity"]) == Decimal("1.25")
    assert books.rows("SELECT quantity FROM trades") == [(Decimal("1.25"),)]


def test_same_trade_spelled_differently_is_a_duplicate_not_a_conflict(client: httpx.Client) -> None:
    deliver(client, body_of(trade(8, quantity="1.5", executed_at="2026-11-02T14:30:00Z")))
    response = deliver(client, body_of(trade(8, quantity="1.500", executed_at="2026-11-02T15:30:00+01:00")))
    assert response.json() == {"accepted": 0, "duplicates": 1, "conflicts": []}


def test_concurrent_one_trade_webhooks_stored_in_groups_each_get_their_own_counts(
    client: httpx.Client, books: Books
) -> None:
    assert_concurrent_deliveries_each_counted_once(client, books)


def test_several_api_processes_share_the_books_and_still_count_each_trade_once(
    make_fleet: Callable[..., Fleet], books: Books
) -> None:
    fleet = make_fleet(DUSTPAN_API_WORKERS="2")
    fleet.start_api()
    assert fleet.api is not None
    assert len(fleet.api.children()) >= 2  # uvicorn's worker processes, each with its own group writer
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        assert_concurrent_deliveries_each_counted_once(client, books)


def assert_concurrent_deliveries_each_counted_once(client: httpx.Client, books: Books) -> None:
    originals = [trade(n, quantity="1.25") for n in range(100, 110)]
    assert deliver(client, body_of(*originals)).json()["accepted"] == 10
    fresh = [trade(n) for n in range(40)]
    # Each fresh trade twice, each original again, and each original's id with another quantity;
    # sent at once from 8 threads, so that the API stores many of them per group.
    deliveries = fresh + fresh + originals + [trade(n, quantity="2.5") for n in range(100, 110)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda one: deliver(client, body_of(one)), deliveries))

    assert {answer.status_code for answer in answers} == {202}
    counts = [answer.json() for answer in answers]
    # Per fresh id: one of its two webhooks accepted it, the other found it a duplicate.
    for n, trade_id in enumerate(t["id"] for t in fresh):
        pair = [counts[n], counts[n + len(fresh)]]
        assert sorted(pair, key=lambda c: c["accepted"]) == [
            {"accepted": 0, "duplicates": 1, "conflicts": []},
            {"accepted": 1, "duplicates": 0, "conflicts": []},
        ], trade_id
    assert counts[80:90] == [{"accepted": 0, "duplicates": 1, "conflicts": []}] * 10
    assert counts[90:] == [{"accepted": 0, "duplicates": 0, "conflicts": [t["id"]]} for t in originals]
    assert books.value("SELECT count(*) FROM trades") == 50
    assert books.value("SELECT count(*) FROM trades WHERE quantity = 2.5") == 0


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(lambda good: f"v1={'0' * 64},{good}", id="right one last"),
        pytest.param(lambda good: f"{good}, v1={'f' * 64}", id="right one first, with a space"),
        pytest.param(lambda good: f"v1={'0' * 64}, {good}, v1={'1' * 64}", id="right one in the middle"),
    ],
)
def test_several_v1_signatures_are_accepted_when_one_is_right(
    client: httpx.Client, books: Books, header: Callable[[str], str]
) -> None:
    body = body_of(trade())
    headers = signed_headers(body)
    headers["X-Dustpan-Signature"] = header(headers["X-Dustpan-Signature"])
    response = deliver(client, body, headers)
    assert response.status_code == 202, response.text
    assert books.value("SELECT count(*) FROM trades") == 1


def test_rotated_secret_accepts_old_and_new_and_refuses_others(make_fleet: Callable[..., Fleet], books: Books) -> None:
    fleet = make_fleet(DUSTPAN_WEBHOOK_SECRET="new,old")
    fleet.start_api()
    with httpx.Client(base_url=fleet.api_url, timeout=30) as http:
        old = deliver(http, VALID, signed_headers(VALID, secret="old"))
        new = deliver(http, body_of(trade(1)), signed_headers(body_of(trade(1)), secret="new"))
        retired = deliver(http, body_of(trade(2)), signed_headers(body_of(trade(2)), secret=WEBHOOK_SECRET))
    assert (old.status_code, new.status_code, retired.status_code) == (202, 202, 401)
    assert sorted(r[0] for r in books.rows("SELECT id FROM trades")) == ["t-0", "t-1"]


def test_json_number_quantity_is_stored_exactly_from_its_text(client: httpx.Client, books: Books) -> None:
    body = _with_raw_quantity("0.100000000000000001").replace(b'"231.40"', b"231.4")
    response = deliver(client, body)
    assert response.status_code == 202, response.text
    stored = operator(client, "/trades/t-0")
    assert stored["quantity"] == "0.100000000000000001"
    assert Decimal(stored["price"]) == Decimal("231.4")
    assert books.value("SELECT quantity FROM trades WHERE id = 't-0'") == Decimal("0.100000000000000001")


# --- operator endpoints ----------------------------------------------------------------------

OPERATOR_PATHS = ["/accumulators", "/executions", "/trades/x", "/audit"]


@pytest.mark.parametrize("path", OPERATOR_PATHS)
@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no token"),
        pytest.param("Bearer wrong-token", id="wrong token"),
        pytest.param(f"Bearer {API_TOKEN}x", id="token with a suffix"),
        pytest.param(API_TOKEN, id="token without Bearer"),
        pytest.param(f"Basic {API_TOKEN}", id="token as Basic"),
        pytest.param("Bearer", id="bearer without a token"),
    ],
)
def test_operator_endpoint_refuses_without_the_right_token(
    client: httpx.Client, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get(path, headers=headers)
    assert response.status_code == 401, response.text


@pytest.mark.parametrize("path", OPERATOR_PATHS)
def test_operator_endpoint_answers_with_the_token(client: httpx.Client, path: str) -> None:
    assert deliver(client, body_of(trade(id="x"))).status_code == 202
    operator(client, path)


def test_health_needs_no_token_and_reports_every_component_ok(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json()["components"] == {"database": "ok", "broker": "ok", "brokerage": "ok"}
