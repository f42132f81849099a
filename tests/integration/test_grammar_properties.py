"""Hostile text for every decimal, time, trade id, symbol and boolean field, against the real API.

Hypothesis writes the values (Unicode digits and spaces, exponents, signs, underscores, huge and
tiny magnitudes, offsets up to +-23:59 and beyond, years 1 to 9999, NaN and Infinity, wrong
JSON types); the real API process answers on real PostgreSQL. For every value:

- never a 5xx;
- the answer agrees with an oracle written here from SPEC section 3's words, independently of
  ``models/domain/grammar.py``: accepted exactly when the oracle accepts;
- a refusal is a 422 naming the field, and the books are unchanged (row counts and content
  hashes of every table);
- an acceptance reads back exactly through ``GET``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Services, truncate_all
from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, fleet_env
from tests.integration.test_fuzz_api import BooksFingerprint
from tests.support.fleet import Fleet
from tests.support.hostile import BOOLEANS, DECIMALS, SYMBOLS, TIMES, TRADE_IDS, RawNumber, on_the_wire, to_json
from workers.webhook import sign

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
EXAMPLES = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=False
)

# --- the oracle: SPEC section 3, read literally -----------------------------------------------------

SPEC_DECIMAL = re.compile(r"[0-9]+(\.[0-9]{1,18})?")
SPEC_TRADE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SPEC_SYMBOL = re.compile(r"[A-Z0-9./-]{1,16}")
SPEC_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def oracle_positive_decimal(kind: str, value: Any) -> Decimal | None:
    """NUMERIC(38, 18) holds 20 integer digits; quantities, prices and notionals are > 0."""
    if kind not in ("string", "number") or not SPEC_DECIMAL.fullmatch(value):
        return None
    if len(value.split(".")[0].lstrip("0")) > 20 or Decimal(value) == 0:
        return None
    return Decimal(value)


def oracle_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not SPEC_TIME.fullmatch(value):
        return None
    if value[-3] == ":" and int(value[-2:]) > 59:  # offset minutes
        return None
    try:
        utc = datetime.fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    inside = datetime(1970, 1, 1, tzinfo=UTC) <= utc <= datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    return utc if inside else None


# --- the API --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(services: Services, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("grammar-properties")
    fleet = Fleet(fleet_env(database_url, services.broker_url, home / "data"), home)
    fleet.start_api()
    yield fleet
    fleet.stop()


class Probe:
    """Sends one request and checks the rules that hold for every answer."""

    def __init__(self, api: Fleet, database_url: str) -> None:
        self.http = httpx.Client(base_url=api.api_url, timeout=30)
        self.books = BooksFingerprint(database_url)

    def send(self, method: str, path: str, body: Any = None, signed: bool = False) -> httpx.Response:
        before = self.books.take()
        content = None if body is None else to_json(body).encode()
        headers = {"Content-Type": "application/json", **AUTH}
        if signed:
            assert content is not None
            stamp = str(int(time.time()))
            headers.update({"X-Dustpan-Timestamp": stamp, "X-Dustpan-Signature": sign(WEBHOOK_SECRET, stamp, content)})
        answer = self.http.request(method, path, content=content, headers=headers)
        assert answer.status_code < 500, answer.text
        if answer.status_code >= 400:
            assert self.books.take() == before, f"a {answer.status_code} changed the books: {answer.text}"
        return answer

    def webhook(self, **changes: Any) -> httpx.Response:
        trade = {
            "id": f"p-{uuid.uuid4().hex[:16]}",
            "symbol": "AAPL",
            "side": "buy",
            "quantity": "1",
            "price": "10",
            "executed_at": "2026-11-02T14:30:00Z",
            **changes,
        }
        return self.send("POST", "/webhooks/trades", {"trades": [trade]}, signed=True)

    def trade(self, trade_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/trades/{quote(trade_id, safe='').replace('.', '%2E')}", headers=AUTH)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def close(self) -> None:
        self.http.close()
        self.books.close()


@pytest.fixture(scope="module")
def probe(api: Fleet, database_url: str) -> Iterator[Probe]:
    truncate_all(database_url)  # trade ids of other modules' tests would be conflicts here
    checker = Probe(api, database_url)
    yield checker
    checker.close()


def refused_naming(answer: httpx.Response, field: str) -> None:
    event("refused")
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_payload", answer.text
    assert field in [d["field"] for d in answer.json()["details"]], answer.text


def stored_id(answer: httpx.Response, sent: dict[str, Any]) -> None:
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] + answer.json()["duplicates"] == 1, answer.text


# --- the properties ---------------------------------------------------------------------------------


@EXAMPLES
@given(field=st.sampled_from(["quantity", "price"]), sent=DECIMALS)
def test_webhook_decimals_are_accepted_exactly_by_the_spec_grammar_and_read_back(
    probe: Probe, field: str, sent: tuple[str, Any]
) -> None:
    trade_id = f"d-{uuid.uuid4().hex[:16]}"
    answer = probe.webhook(id=trade_id, **{field: on_the_wire(*sent)})
    expected = oracle_positive_decimal(*sent)
    if expected is None:
        refused_naming(answer, f"trades.0.{field}")
        return
    assert answer.status_code == 202, answer.text
    event("accepted")
    stored = probe.trade(trade_id)[field]
    assert "E" not in stored and "e" not in stored, stored
    assert Decimal(stored) == expected


@EXAMPLES
@given(sent=DECIMALS)
def test_sale_notional_is_accepted_exactly_by_the_spec_grammar(probe: Probe, sent: tuple[str, Any]) -> None:
    answer = probe.send("POST", "/sells/quote", {"symbol": "AAPL", "notional": on_the_wire(*sent)})
    expected = oracle_positive_decimal(*sent)
    if expected is None:
        refused_naming(answer, "notional")
        return
    assert answer.status_code == 200, answer.text
    event("accepted")
    assert Decimal(answer.json()["requested"]) == expected


@EXAMPLES
@given(sent=TIMES)
def test_webhook_times_are_accepted_by_rfc_3339_in_range_and_read_back_in_utc(probe: Probe, sent: Any) -> None:
    trade_id = f"t-{uuid.uuid4().hex[:16]}"
    answer = probe.webhook(id=trade_id, executed_at=sent)
    expected = oracle_time(sent)
    if expected is None:
        refused_naming(answer, "trades.0.executed_at")
        return
    assert answer.status_code == 202, answer.text
    event("accepted")
    assert datetime.fromisoformat(probe.trade(trade_id)["executed_at"]) == expected


@EXAMPLES
@given(sent=TRADE_IDS)
def test_trade_ids_are_accepted_by_the_spec_grammar_and_every_accepted_id_reads_back(probe: Probe, sent: Any) -> None:
    answer = probe.webhook(id=sent)
    if not (isinstance(sent, str) and SPEC_TRADE_ID.fullmatch(sent)):
        refused_naming(answer, "trades.0.id")
        return
    stored_id(answer, {"id": sent})
    event("accepted")
    assert probe.trade(sent)["id"] == sent


@EXAMPLES
@given(sent=SYMBOLS)
def test_symbols_are_accepted_by_the_spec_grammar_in_bodies_and_queries(probe: Probe, sent: Any) -> None:
    trade_id = f"s-{uuid.uuid4().hex[:16]}"
    answer = probe.webhook(id=trade_id, symbol=sent)
    valid = isinstance(sent, str) and SPEC_SYMBOL.fullmatch(sent) is not None
    if not valid:
        refused_naming(answer, "trades.0.symbol")
    else:
        assert answer.status_code == 202, answer.text
        event("accepted")
        assert probe.trade(trade_id)["symbol"] == sent
    if isinstance(sent, str) and "\x00" not in sent:
        listed = probe.send("GET", f"/executions?symbol={quote(sent, safe='')}")
        assert listed.status_code == (200 if valid else 422), listed.text


@EXAMPLES
@given(sent=BOOLEANS)
def test_exit_all_takes_json_true_or_false_and_nothing_else(probe: Probe, sent: Any) -> None:
    answer = probe.send("POST", "/exits", {"symbol": "NOPOS", "all": sent, "reason": "property"})
    if sent is True:  # past the grammar: there is no position to exit
        assert answer.status_code == 409, answer.text
    elif sent is False:  # grammatical, but neither a quantity nor all
        assert answer.status_code == 422, answer.text
        assert "all" not in [d["field"] for d in answer.json()["details"]], answer.text
    else:
        refused_naming(answer, "all")


def test_oracle_and_strategies_reach_both_sides() -> None:
    """The properties above mean something only if both acceptances and refusals are drawn."""
    assert oracle_positive_decimal("string", "0.000000000000000001") == Decimal("1E-18")
    assert oracle_positive_decimal("number", "1e2") is None
    assert oracle_time("2026-11-02t14:30:00.5+23:59") == datetime(2026, 11, 1, 14, 31, 0, 500000, tzinfo=UTC)
    assert oracle_time("0001-01-01T00:00:00+01:00") is None
    assert json.loads(to_json({"n": RawNumber("1.50")}))["n"] == 1.5  # float-ok: reads the test's own JSON
