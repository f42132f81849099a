"""Issue 13's findings, one test each, against the real API process on real PostgreSQL.

Each test is named after what a client probing from outside found: a 500, a value taken that
should not have been, an answer that could not be read back. The books are truncated before
every test; nothing else writes them (no worker runs), so any change is the request's.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import psycopg2
import pytest

from tests.conftest import Services
from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books, fleet_env
from tests.support.fault_proxy import FaultProxy
from tests.support.fleet import DustpanProcess, Fleet, free_port, wait_for
from workers.webhook import sign

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SLOW_SETTINGS = {"DUSTPAN_HTTP__HEADER_TIMEOUT_SECONDS": "1", "DUSTPAN_HTTP__BODY_TIMEOUT_SECONDS": "2"}


@pytest.fixture(scope="module")
def api(services: Services, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("strict-api")
    fleet = Fleet(fleet_env(database_url, services.broker_url, home / "data", **SLOW_SETTINGS), home)
    fleet.start_api()
    yield fleet
    fleet.stop()


@pytest.fixture
def client(api: Fleet, books: Books, broker_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.api_url, timeout=30) as http:
        yield http


def trade(**changes: Any) -> dict[str, Any]:
    fields = {
        "id": "t-1",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "1.25",
        "price": "231.40",
        "executed_at": "2026-11-02T14:30:00Z",
    }
    return {**fields, **changes}


def deliver(client: httpx.Client, *trades: dict[str, Any]) -> httpx.Response:
    body = json.dumps({"trades": list(trades)}).encode()
    stamp = str(int(time.time()))
    headers = {"X-Dustpan-Timestamp": stamp, "X-Dustpan-Signature": sign(WEBHOOK_SECRET, stamp, body)}
    return client.post("/webhooks/trades", content=body, headers=headers)


def refused_fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_payload", answer
    assert all(set(d) == {"field", "problem"} for d in answer["details"]), answer
    return [d["field"] for d in answer["details"]]


def books_are_empty(books: Books) -> bool:
    return books.value("SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM executions)") == 0


def seed_position(url: str, symbol: str, quantity: str) -> None:
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("INSERT INTO accumulators (symbol, last_price) VALUES (%s, 10)", (symbol,))
            cursor.execute(
                "INSERT INTO positions (account, symbol, quantity, average_price) VALUES ('default', %s, %s, 10)",
                (symbol, quantity),
            )
    finally:
        connection.close()


# --- executed_at ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", ["+23:59", "-23:59", "+16:00", "-00:01"])
def test_executed_at_with_an_offset_postgres_cannot_display_is_stored_in_utc(client: httpx.Client, offset: str) -> None:
    written = f"2026-11-02T14:30:00.5{offset}"
    assert deliver(client, trade(executed_at=written)).status_code == 202
    stored = client.get("/trades/t-1", headers=AUTH).json()["executed_at"]
    assert datetime.fromisoformat(stored) == datetime.fromisoformat(written).astimezone(UTC)


@pytest.mark.parametrize(
    "written",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-00:01", "1969-12-31T23:59:59Z", "0000-01-01T00:00:00Z"],
)
def test_executed_at_whose_utc_time_leaves_the_year_range_is_422_not_500(
    client: httpx.Client, books: Books, written: str
) -> None:
    assert refused_fields(deliver(client, trade(executed_at=written))) == ["trades.0.executed_at"]
    assert books_are_empty(books)


# --- decimals ------------------------------------------------------------------------------------

UNICODE_AND_UNDERSCORE_NUMBERS = ["\u0661\u0662", "\uff11\uff12", "1_000", "\U0001d7cf", "\u0967.5", "1\u00a0000"]


@pytest.mark.parametrize("written", UNICODE_AND_UNDERSCORE_NUMBERS)
def test_quantities_with_non_ascii_digits_or_underscores_are_refused_and_no_order_is_placed(
    client: httpx.Client, books: Books, clean_database: str, written: str
) -> None:
    assert refused_fields(deliver(client, trade(quantity=written))) == ["trades.0.quantity"]
    seed_position(clean_database, "AAPL", "500")
    exit_answer = client.post("/exits", headers=AUTH, json={"symbol": "AAPL", "quantity": written, "reason": "x"})
    sell_answer = client.post("/sells", headers=AUTH, json={"symbol": "AAPL", "notional": written})
    assert refused_fields(exit_answer) == ["quantity"]
    assert refused_fields(sell_answer) == ["notional"]
    assert books_are_empty(books)


# --- booleans -----------------------------------------------------------------------------------


@pytest.mark.parametrize("truthy", ["yes", "true", "on", 1, "1", [True], {"value": True}])
def test_exit_with_all_as_a_truthy_non_boolean_is_422_and_sells_nothing(
    client: httpx.Client, books: Books, clean_database: str, truthy: object
) -> None:
    seed_position(clean_database, "AAPL", "500")
    answer = client.post("/exits", headers=AUTH, json={"symbol": "AAPL", "all": truthy, "reason": "x"})
    assert refused_fields(answer) == ["all"]
    assert books_are_empty(books)
    # The same request with JSON true is what sells the position.
    sold = client.post("/exits", headers=AUTH, json={"symbol": "AAPL", "all": True, "reason": "x"})
    assert sold.status_code == 202, sold.text
    assert Decimal(sold.json()["execution"]["quantity"]) == 500


# --- plain notation -------------------------------------------------------------------------------


def test_zero_decimal_comes_back_as_0_not_0e_18_from_accumulators_and_in_409_texts(
    client: httpx.Client, clean_database: str
) -> None:
    seed_position(clean_database, "AAPL", "0")
    listed = client.get("/accumulators", headers=AUTH)
    one = client.get("/accumulators/AAPL", headers=AUTH)
    refused = client.post("/exits", headers=AUTH, json={"symbol": "AAPL", "all": True, "reason": "x"})
    assert listed.json()["items"][0]["net_quantity"] == "0"
    assert one.json()["net_quantity"] == "0"
    assert refused.status_code == 409, refused.text
    assert "holds 0 AAPL" in refused.json()["message"]
    for answer in (listed, one, refused):
        assert not re.search(r"[0-9]E[-+]?[0-9]", answer.text), answer.text


# --- trade ids ------------------------------------------------------------------------------------


def test_trade_id_containing_a_slash_is_422_and_an_accepted_id_reads_back(client: httpx.Client, books: Books) -> None:
    assert refused_fields(deliver(client, trade(id="a/b"))) == ["trades.0.id"]
    assert books_are_empty(books)
    odd = "Fill.2026-11-02T14:30:00_x:1"
    assert deliver(client, trade(id=odd)).status_code == 202
    answer = client.get(f"/trades/{odd}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == odd


# --- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_authorization_scheme_is_compared_case_insensitively(client: httpx.Client, scheme: str) -> None:
    assert client.get("/accumulators", headers={"Authorization": f"{scheme} {API_TOKEN}"}).status_code == 200
    assert client.get("/accumulators", headers={"Authorization": f"{scheme} wrong"}).status_code == 401


# --- the OpenAPI document and its pages -------------------------------------------------------------


def test_openapi_declares_http_bearer_every_error_answer_and_the_grammar(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["HTTPBearer"]["description"],
    }
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            codes = set(operation["responses"])
            if path in ("/webhooks/trades",):
                assert {"401", "413", "422", "503"} <= codes, (method, path, codes)
            elif path not in ("/health", "/health/live", "/health/ready"):  # no auth: probes
                assert {"HTTPBearer": []} in operation.get("security", []), (method, path)
                assert {"401", "503"} <= codes, (method, path, codes)
                takes_input = operation.get("parameters") or operation.get("requestBody")
                assert not takes_input or "422" in codes, (method, path, codes)
    assert {"409", "422", "503"} <= set(spec["paths"]["/sells/quote"]["post"]["responses"])
    webhook = spec["paths"]["/webhooks/trades"]["post"]
    trade = webhook["requestBody"]["content"]["application/json"]["schema"]["properties"]["trades"]["items"]
    assert trade["properties"]["id"]["pattern"] == "^[A-Za-z0-9._:-]{1,128}$"
    assert trade["properties"]["executed_at"]["format"] == "date-time"
    assert {p["name"] for p in webhook["parameters"]} == {"X-Dustpan-Timestamp", "X-Dustpan-Signature"}
    assert "404" in spec["paths"]["/trades/{trade_id}"]["get"]["responses"]
    notional = spec["paths"]["/sells"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    as_text, as_number = notional["properties"]["notional"]["anyOf"]
    assert as_number["exclusiveMinimum"] == 0
    pattern = re.compile(as_text["pattern"])
    assert not any(pattern.search(zero) for zero in ("0", "0.0", "000.000000000000000000"))
    assert all(pattern.search(ok) for ok in ("0.000000000000000001", "1", "100.50", "007"))
    assert not any(pattern.search(bad) for bad in ("1e2", "-1", "1_0", "\uff11", "0.0000000000000000001"))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_and_redoc_load_only_assets_the_api_serves_itself(client: httpx.Client, page: str) -> None:
    html = client.get(page)
    assert html.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    assets += re.findall(r"""url: ?["']([^"']+)["']""", html.text)
    assert assets, html.text
    assert not [a for a in assets if "//" in a], "assets from another host: " + html.text
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


# --- outages ---------------------------------------------------------------------------------------


@pytest.fixture
def brokerage_down(services: Services, clean_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API whose brokerage (Alpaca, on a port nothing listens on) cannot be reached."""
    home = tmp_path_factory.mktemp("brokerage-down")
    closed = f"http://127.0.0.1:{free_port()}"
    env = fleet_env(
        clean_database,
        services.broker_url,
        home / "data",
        DUSTPAN_BROKERAGE="alpaca",
        DUSTPAN_ALPACA_TRADING_URL=closed,
        DUSTPAN_ALPACA_DATA_URL=closed,
        DUSTPAN_ALPACA_KEY_ID="key",
        DUSTPAN_ALPACA_SECRET_KEY="secret",
        DUSTPAN_ALPACA_TIMEOUT_SECONDS="2",
    )
    port = free_port()
    api = DustpanProcess("api-brokerage-down", ["api", "--port", str(port)], env, home).start()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 60, f"the API to answer /health\n{api.log_tail()}")
        yield url
    finally:
        api.stop()


def test_sells_quote_answers_503_with_retry_after_while_the_brokerage_is_down(
    brokerage_down: str, books: Books
) -> None:
    for path in ("/sells/quote", "/sells"):
        answer = httpx.post(
            f"{brokerage_down}{path}", headers=AUTH, json={"symbol": "AAPL", "notional": "100"}, timeout=60
        )
        assert answer.status_code == 503, (path, answer.text)
        assert int(answer.headers["Retry-After"]) > 0
        assert answer.json()["error"] == "unavailable"
    assert books_are_empty(books)


def test_database_outage_answers_503_with_retry_after_on_reads_orders_and_the_webhook(
    services: Services, clean_database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = tmp_path_factory.mktemp("database-down")
    with FaultProxy.for_url(clean_database) as proxy:
        fleet = Fleet(fleet_env(proxy.url_for(clean_database), services.broker_url, home / "data"), home)
        fleet.start_api()
        try:
            proxy.refuse = True  # new connections are reset: PostgreSQL looks down
            proxy.reset_all()
            with httpx.Client(base_url=fleet.api_url, timeout=60) as http:
                answers = {
                    "GET /accumulators": http.get("/accumulators", headers=AUTH),
                    "GET /trades/t-1": http.get("/trades/t-1", headers=AUTH),
                    "POST /sells/quote": http.post("/sells/quote", headers=AUTH, json={"symbol": "A", "notional": "1"}),
                    "POST /exits": http.post("/exits", headers=AUTH, json={"symbol": "A", "all": True, "reason": "x"}),
                    "POST /webhooks/trades": deliver(http, trade()),
                }
        finally:
            fleet.stop()
    for name, answer in answers.items():
        assert answer.status_code == 503, (name, answer.text)
        assert int(answer.headers["Retry-After"]) > 0, name


# --- slow and vanished clients -----------------------------------------------------------------------


def raw_connection(api: Fleet) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", api.api_port), timeout=30)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65_536):
        received += chunk
    return received


def api_log(api: Fleet) -> str:
    assert api.api is not None
    return api.api.log_path.read_text(errors="replace")


def test_client_sending_headers_slowly_is_answered_408_and_its_connection_closed(api: Fleet) -> None:
    with raw_connection(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")
    with raw_connection(api) as sock:  # connected, and not a byte sent
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_client_whose_body_never_completes_is_cut_off_and_nothing_is_stored(
    api: Fleet, client: httpx.Client, books: Books
) -> None:
    body = json.dumps({"trades": [trade()]}).encode()
    stamp = str(int(time.time()))
    head = (
        f"POST /webhooks/trades HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Dustpan-Timestamp: {stamp}\r\n"
        f"X-Dustpan-Signature: {sign(WEBHOOK_SECRET, stamp, body)}\r\n\r\n"
    ).encode()
    with raw_connection(api) as sock:
        sock.sendall(head + body[:-5])
        answer = read_until_closed(sock)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    assert books_are_empty(books)
    assert client.get("/health").status_code == 200  # and the API serves others as before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/webhooks/trades", json.dumps({"trades": [trade()]}).encode()),
        ("/exits", json.dumps({"symbol": "AAPL", "all": True, "reason": "x"}).encode()),
    ],
)
def test_client_disconnecting_mid_body_is_one_log_line_without_traceback_and_nothing_applied(
    api: Fleet, books: Books, clean_database: str, path: str, body: bytes
) -> None:
    seed_position(clean_database, "AAPL", "500")
    before = len(api_log(api))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Authorization: Bearer {API_TOKEN}\r\n\r\n"
    ).encode()
    with raw_connection(api) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.3)  # the request is under way, its body half read
    wait_for(lambda: "disconnected" in api_log(api)[before:], 20, "the disconnect to be logged")
    time.sleep(0.5)  # anything a traceback would add comes right after
    logged = api_log(api)[before:]
    assert "Traceback" not in logged, logged
    assert len([line for line in logged.splitlines() if "disconnected" in line]) == 1, logged
    assert books_are_empty(books)


def test_connections_past_the_cap_are_answered_503_and_the_api_serves_again_once_they_close(
    services: Services, clean_database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = tmp_path_factory.mktemp("connection-cap")
    env = fleet_env(clean_database, services.broker_url, home / "data", DUSTPAN_HTTP__MAX_CONNECTIONS="2")
    fleet = Fleet(env, home)
    fleet.start_api()
    try:
        held = [socket.create_connection(("127.0.0.1", fleet.api_port), timeout=30) for _ in range(2)]
        over = httpx.get(f"{fleet.api_url}/health", timeout=30)
        for sock in held:
            sock.close()
        wait_for(lambda: httpx.get(f"{fleet.api_url}/health", timeout=30).status_code == 200, 20, "a free slot")
    finally:
        fleet.stop()
    assert over.status_code == 503, over.text
