"""A generated fuzz run against every endpoint of the real API process (SPEC section 3).

Over thousands of requests, valid and not, with and without credentials: no answer is a
5xx, and a refused request (4xx) leaves every table of the books as it was.

Schemathesis generates the operator endpoints' requests from the API's own /openapi.json
(positive and negative cases, so a new endpoint or parameter is fuzzed without touching
this file); Hypothesis drives each operation's strategy so that this test chooses how many
requests each gets and checks the books around every one. The webhook reads a raw body that
OpenAPI does not describe and must be signed over its exact bytes, so its requests come from
a strategy of our own that builds the bytes, then signs (or deliberately mis-signs) them.
Failures are collected rather than raised at the first one, so one run reports every
distinct bug with the exact request that found it.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg2
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Err

from models.tables import Base
from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET
from tests.support.fleet import Fleet
from tests.support.hostile import (
    DECIMAL_STRINGS,
    HOSTILE_AMOUNTS,
    HOSTILE_BOOLEANS,
    JSON_NUMBERS,
    TIMES,
    VALID_TIMES,
    RawNumber,
    to_json,
)
from tests.support.hostile import SYMBOLS as HOSTILE_SYMBOLS
from tests.support.hostile import TRADE_IDS as HOSTILE_TRADE_IDS
from workers.webhook import sign

pytestmark = pytest.mark.integration

WEBHOOK = "POST /webhooks/trades"
SPEC_ENDPOINTS = {
    WEBHOOK,
    "GET /accumulators",
    "GET /accumulators/{symbol}",
    "GET /executions",
    "GET /trades/{trade_id}",
    "GET /audit",
    "POST /sells",
    "POST /sells/quote",
    "POST /exits",
    "GET /dust",
    "GET /freezes",
    "POST /freezes/{symbol}",
    "DELETE /freezes/{symbol}",
    "GET /balances",
    "GET /health",
    "GET /metrics",
}
ROUNDS = 3  # endpoints take turns, so later requests meet the rows earlier ones created
PER_OPERATION_ROUND = 110  # x ROUNDS requests to each operator endpoint
WEBHOOK_ROUND = 300
MAX_BODY_BYTES = 65_536  # small limits make the 413 and too-many-trades paths cheap to reach
MAX_TRADES = 50
# Known values, so that generated requests also hit rows that exist, not only random misses.
KNOWN_SYMBOLS = ("AAPL", "MSFT", "BRK.B", "FRAC")
ACCOUNTS = ("default", "alt")
KNOWN_TRADE_IDS = tuple(f"fz-{n}" for n in range(30))
FLEET_SETTINGS = {
    "DUSTPAN_WEBHOOK__MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "DUSTPAN_WEBHOOK__MAX_TRADES": str(MAX_TRADES),
    "DUSTPAN_DUST__MAX_DUST_PER_SALE": "2.50",
    "DUSTPAN_DUST__MIN_POSITION_VALUE": "5",
    "DUSTPAN_ACCOUNTS": ",".join(ACCOUNTS),
    "DUSTPAN_VENUES__RULES": json.dumps({"FRAC": {"whole_shares": False, "step": "0.0001", "min_notional": "1"}}),
}
FUZZ_SETTINGS = settings(
    database=None,
    deadline=None,
    phases=[Phase.generate],  # failures are collected, not raised: nothing to shrink
    suppress_health_check=list(HealthCheck),
)


class BooksFingerprint:
    """Row count and a content hash of every table, in one query over one connection."""

    def __init__(self, url: str) -> None:
        self.connection = psycopg2.connect(url)
        self.connection.autocommit = True
        self.tables = list(Base.metadata.tables)
        self.query = "SELECT " + ", ".join(
            f"(SELECT count(*) FROM {t}), (SELECT coalesce(sum(hashtextextended(r::text, 0)), 0) FROM {t} r)"
            for t in self.tables
        )

    def take(self) -> dict[str, tuple[int, Decimal]]:
        with self.connection.cursor() as cursor:
            cursor.execute(self.query)
            row = cursor.fetchone()
        assert row is not None
        return {t: (row[2 * i], row[2 * i + 1]) for i, t in enumerate(self.tables)}

    def close(self) -> None:
        self.connection.close()


@dataclass
class Answer:
    """What the checks read of a response, from requests or from schemathesis alike."""

    status_code: int
    text: str
    request: requests.PreparedRequest


def describe(request: requests.PreparedRequest) -> str:
    body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in {"user-agent", "accept-encoding"}}
    shown = body[:600] + (b"..." if len(body) > 600 else b"")
    return f"{request.method} {request.url}\n  headers: {headers}\n  body ({len(body)} bytes): {shown!r}"


def error_name(text: str) -> str:
    try:
        answer = json.loads(text)
    except ValueError:
        return ""
    return str(answer.get("error", "")) if isinstance(answer, dict) else ""


@dataclass
class FuzzRun:
    """Sends requests and checks each answer; the books are fingerprinted around every one."""

    api_url: str
    books: BooksFingerprint
    session: requests.Session = field(default_factory=requests.Session)
    seed: int = field(default_factory=lambda: random.randrange(2**32))
    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, "409 insufficient_position")
    failures: dict[str, list[str]] = field(default_factory=dict)  # kind of failure -> examples

    def fail(self, kind: str, example: str) -> None:
        self.failures.setdefault(kind, []).append(example)

    def report(self) -> str:
        return "\n\n".join(
            f"{kind} ({len(examples)} requests), e.g.:\n" + "\n".join(examples[:2])
            for kind, examples in self.failures.items()
        )

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def check(self, endpoint: str, send: Callable[[], Answer]) -> None:
        # Nothing else writes the books (no worker or Beat runs), so any change is this request's.
        before = self.books.take()
        self.sent[endpoint] += 1
        try:
            response = send()
        except requests.RequestException as exc:
            request = getattr(exc, "request", None)
            shown = describe(request) if isinstance(request, requests.PreparedRequest) else endpoint
            self.fail(f"{endpoint}: no answer ({type(exc).__name__})", f"  {exc!r}\n  {shown}")
            return
        status = response.status_code
        self.statuses[(endpoint, status)] += 1
        self.outcomes[(endpoint, f"{status} {error_name(response.text)}".strip())] += 1
        if status >= 500:
            self.fail(f"{endpoint}: {status}", f"  answer: {response.text[:300]!r}\n  {describe(response.request)}")
        elif 400 <= status < 500:
            after = self.books.take()
            changed = {t: (before[t], after[t]) for t in before if before[t] != after[t]}
            if changed:
                self.fail(
                    f"{endpoint}: refused with {status} but changed {sorted(changed)}",
                    f"  (count, content hash) before and after: {changed}\n"
                    f"  answer: {response.text[:300]!r}\n  {describe(response.request)}",
                )

    def send_case(self, case: schemathesis.Case, auth: dict[str, str]) -> Answer:
        answer = case.call(base_url=self.api_url, session=self.session, headers=auth, timeout=30)
        return Answer(answer.status_code, answer.content.decode(errors="replace"), answer.request)


# --- values ----------------------------------------------------------------------------

# Plain notation, as SPEC section 3 writes decimals ("1E-18" is refused: it has an exponent).
DECIMAL_TEXT = st.one_of(
    st.decimals(min_value=Decimal("0.000000000000000001"), max_value=Decimal(10**9), places=18).map(
        lambda d: format(d, "f")
    ),
    st.integers(min_value=1, max_value=10**6).map(str),
    st.sampled_from(["0.5", "1", "100", "0.000000000000000001", "99999999999999999999.999999999999999999"]),
)
BAD_DECIMAL_TEXT = st.one_of(
    st.sampled_from(
        ["", " 1", "0", "-1", "-0.0", "1e999999", "1e-999999", "NaN", "Infinity", "1_0", "0x10", "1,5", "\uff11"]
    ),
    DECIMAL_STRINGS,  # Unicode digits and spaces, exponents, signs, underscores, huge and tiny
)

# --- operator endpoints: schemathesis cases under an overlay of credentials and known values ---

AUTH_HEADERS = [{"Authorization": f"Bearer {API_TOKEN}"}] * 30 + [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"bearer {API_TOKEN}"},
    {"Authorization": f"Basic {API_TOKEN}"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Bearer {API_TOKEN}x"},
]
# Whole-share amounts and notionals on a price multiple fill from the seeded positions; FRAC's
# fine step leaves under a cent of dust on any notional.
FILLABLE_AMOUNTS = ["1", "2", "3", "10", "25.5", "100", "231.40", "415.10", "457.25", "462.80"]
HOSTILE_TEXTS = ["\x00", "a\x00b", "\ud800", "%00", "\u2028", "\U0001f642", "' OR 1=1 --", "../..", "x" * 5000, " ", ""]


@dataclass(frozen=True)
class Overlay:
    """What goes over a generated case: credentials (mostly good), known symbols, trade ids,
    accounts and fillable amounts (the OpenAPI cannot say that an amount must be > 0), so that
    requests get past the first checks to the books; now and then hostile text in one string."""

    auth: dict[str, str]
    symbol: str | None
    trade_id: str | None
    account: str | None
    amount: str | None
    all: Any
    hostile: tuple[int, str] | None

    @classmethod
    def draw(cls, rng: random.Random) -> Overlay:
        # Plain random choices, not Hypothesis draws: it favours the first, simplest values.
        def sometimes(values: list[str], chance: float) -> str | None:
            return rng.choice(values) if rng.random() < chance else None

        any_amount = format(Decimal(rng.randrange(1, 10**9)).scaleb(-rng.randrange(19)), "f")
        amount = sometimes(FILLABLE_AMOUNTS, 0.5) or sometimes([any_amount], 0.5) or sometimes(HOSTILE_AMOUNTS, 0.3)
        return cls(
            auth=rng.choice(AUTH_HEADERS),
            symbol=sometimes([*KNOWN_SYMBOLS, "FRAC"], 0.8),
            trade_id=sometimes(list(KNOWN_TRADE_IDS), 0.7),
            account=sometimes(list(ACCOUNTS), 0.75),
            amount=amount,
            # Exits: mostly JSON booleans, now and then a truthy or falsy non-boolean (a 422).
            all=rng.choice([True, False, *HOSTILE_BOOLEANS]) if rng.random() < 0.5 else None,
            hostile=(rng.randrange(8), rng.choice(HOSTILE_TEXTS)) if rng.random() < 0.15 else None,
        )

    def apply(self, case: schemathesis.Case) -> None:
        for name, value in (("symbol", self.symbol), ("trade_id", self.trade_id)):
            if value is not None and name in case.path_parameters:
                case.path_parameters[name] = value
        body = case.body if isinstance(case.body, dict) else {}
        for name, value in (
            ("symbol", self.symbol),
            ("account", self.account),
            ("notional", self.amount),
            ("quantity", self.amount),
        ):
            if value is not None and name in body:
                body[name] = value
        if self.all is not None and "all" in body:
            body["all"] = self.all
        if self.hostile is not None:
            index, text = self.hostile
            # A lone surrogate cannot be encoded into a URL; JSON escapes it.
            places = [body] if "\ud800" in text else [case.path_parameters, case.query or {}, body]
            strings = [(place, key) for place in places for key, value in place.items() if isinstance(value, str)]
            if strings:
                place, key = strings[index % len(strings)]
                place[key] = text


def operation_strategy(operation: schemathesis.APIOperation) -> st.SearchStrategy[schemathesis.Case]:
    positive = operation.as_strategy(schemathesis.GenerationMode.POSITIVE)
    has_inputs = any(len(p) for p in (operation.path_parameters, operation.query, operation.headers, operation.body))
    if not has_inputs:
        return positive
    return st.one_of(positive, operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))


def fuzz_operation(run: FuzzRun, label: str, operation: schemathesis.APIOperation, count: int) -> None:
    def one(case: schemathesis.Case) -> None:
        overlay = Overlay.draw(run.rng)
        overlay.apply(case)
        run.check(label, lambda: run.send_case(case, overlay.auth))

    repeat(one, operation_strategy(operation), lambda: run.sent[label], count)


def repeat(test: Callable[[Any], None], strategy: st.SearchStrategy[Any], done: Callable[[], int], count: int) -> None:
    """Run ``test`` until ``count`` more requests went out.

    Hypothesis stops early once it has tried everything a small space holds (an operation
    without inputs has one case), so it is run again until the count is reached.
    """
    target = done() + count
    for _ in range(count + 1):
        remaining = target - done()
        if remaining <= 0:
            return
        settings(FUZZ_SETTINGS, max_examples=remaining)(given(strategy)(test))()
    raise AssertionError(f"the strategy could not produce {count} requests")


# --- the webhook: raw bytes, signed over exactly what is sent --------------------------------


AMOUNT = st.one_of(
    DECIMAL_TEXT,  # as a JSON string
    DECIMAL_TEXT.filter(lambda s: s[0].isdigit()).map(RawNumber),  # as a JSON number
)
BAD_AMOUNT = st.one_of(
    BAD_DECIMAL_TEXT,
    st.sampled_from(["-1", "0", "1e999999", "1e-999999", "-0.0"]).map(RawNumber),
    JSON_NUMBERS.map(RawNumber),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
EXECUTED_AT = VALID_TIMES  # years 1970 to 9999, offsets to +-23:59
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
BAD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": st.sampled_from(["", " ", "a b", "é", "x" * 129, "\u0000", "a/b", "fz-1\n"]) | HOSTILE_TRADE_IDS | JUNK,
    "symbol": st.sampled_from(["", "aapl", "A" * 17, "AAPL ", "ÄPL", "A\nB"]) | HOSTILE_SYMBOLS | JUNK,
    "side": st.sampled_from(["BUY", "short", "", "sell "]) | JUNK,
    "quantity": BAD_AMOUNT,
    "price": BAD_AMOUNT,
    "executed_at": st.sampled_from(
        ["2026-11-02T14:30:00", "2026-13-02T14:30:00Z", "yesterday", "2026-11-02", "2026-11-02T24:61:00Z", ""]
    )
    | TIMES  # offsets past +-23:59, years 0 to 9999 and out of range in UTC, leap seconds
    | JUNK,
}
VALID_TRADE = st.fixed_dictionaries(
    {
        "id": st.sampled_from(KNOWN_TRADE_IDS) | st.from_regex(r"fz-[A-Za-z0-9._:-]{1,20}", fullmatch=True),
        "symbol": st.sampled_from(KNOWN_SYMBOLS) | st.from_regex(r"[A-Z0-9./-]{1,16}", fullmatch=True),
        "side": st.sampled_from(["buy", "sell"]),
        "quantity": AMOUNT,
        "price": AMOUNT,
        "executed_at": EXECUTED_AT,
    }
)


@st.composite
def broken_trade(draw: st.DrawFn) -> dict[str, Any]:
    trade: dict[str, Any] = dict(draw(VALID_TRADE))
    name = draw(st.sampled_from(sorted(BAD_FIELDS)))
    match draw(st.sampled_from(["replace", "remove", "extra"])):
        case "replace":
            trade[name] = draw(BAD_FIELDS[name])
        case "remove":
            del trade[name]
        case "extra":
            trade[draw(st.text(min_size=1, max_size=10))] = draw(JUNK)
    return trade


@st.composite
def webhook_body(draw: st.DrawFn) -> bytes:
    trades = st.lists(VALID_TRADE, min_size=1, max_size=4)
    kind = draw(st.sampled_from(["valid"] * 6 + ["broken"] * 4 + ["shape", "bytes", "limits"]))
    if kind == "valid":
        return to_json({"trades": draw(trades)}).encode()
    if kind == "broken":
        mixed = [*draw(trades), draw(broken_trade())]
        return to_json({"trades": draw(st.permutations(mixed))}).encode()
    if kind == "shape":
        shaped: Any = draw(
            st.sampled_from(
                [
                    {"trades": []},
                    {},
                    {"trades": None},
                    {"trades": {}},
                    {"trades": "AAPL"},
                    [],
                    None,
                    "trades",
                    {"trades": [1, "x", None]},
                ]
            )
            | JUNK
            | st.builds(lambda t, k, v: {"trades": t, k: v}, trades, st.text(min_size=1, max_size=8), JUNK)
        )
        return to_json(shaped).encode()
    if kind == "bytes":
        return draw(
            st.binary(max_size=200)
            | st.sampled_from(
                [
                    b"",
                    b"{",
                    b'{"trades": [',
                    b"\xef\xbb\xbf" + b'{"trades": []}',
                    b'{"trades": [{"id": "\xff\xfe"}]}',
                    b"[" * 5000 + b"]" * 5000,
                    b'{"trades": ' * 3000 + b"}" * 3000,
                    b'{"trades": [], "trades": []}',
                    b"NaN",
                ]
            )
        )
    many = [{**draw(VALID_TRADE), "id": f"fz-many-{n}"} for n in range(MAX_TRADES + 1)]
    oversized = {"trades": draw(trades), "padding": "x" * MAX_BODY_BYTES}
    duplicate = draw(VALID_TRADE)
    return to_json(draw(st.sampled_from([{"trades": many}, oversized, {"trades": [duplicate, duplicate]}]))).encode()


SIGNINGS = st.sampled_from(
    ["good"] * 10
    + ["none", "stale", "future", "wrong_secret", "several", "tampered", "bare"]
    + [f"timestamp:{t}" for t in ("", "soon", "1e9", "-1", "99999999999999", "now.0")]
)


def webhook_headers(body: bytes, signing: str) -> tuple[bytes, dict[str, str]]:
    """The bytes to send and the headers for them, signed well or deliberately badly."""
    now = int(time.time())
    stamp = str(now)
    good = sign(WEBHOOK_SECRET, stamp, body)
    headers = {"Content-Type": "application/json", "X-Dustpan-Timestamp": stamp, "X-Dustpan-Signature": good}
    match signing:
        case "none":
            del headers["X-Dustpan-Signature"], headers["X-Dustpan-Timestamp"]
        case "stale" | "future":
            stamp = str(now - 400 if signing == "stale" else now + 400)
            headers.update({"X-Dustpan-Timestamp": stamp, "X-Dustpan-Signature": sign(WEBHOOK_SECRET, stamp, body)})
        case "wrong_secret":
            headers["X-Dustpan-Signature"] = sign("not-the-secret", stamp, body)
        case str() if signing.startswith("timestamp:"):
            headers["X-Dustpan-Timestamp"] = signing.removeprefix("timestamp:").replace("now", stamp)
        case "several":
            headers["X-Dustpan-Signature"] = f"v1=deadbeef, {good},v0=abc"
        case "tampered":
            return body + b" ", headers
        case "bare":
            headers["X-Dustpan-Signature"] = good.removeprefix("v1=")
    return body, headers


def fuzz_webhook(run: FuzzRun, count: int) -> None:
    url = f"{run.api_url}/webhooks/trades"

    def one(drawn: tuple[bytes, str]) -> None:
        def send() -> Answer:
            # Signed at send time, over exactly the bytes that go out.
            body, headers = webhook_headers(*drawn)
            answer = run.session.post(url, data=body, headers=headers, timeout=30)
            return Answer(answer.status_code, answer.text, answer.request)

        run.check(WEBHOOK, send)

    repeat(one, st.tuples(webhook_body(), SIGNINGS), lambda: run.sent[WEBHOOK], count)


# --- the test ------------------------------------------------------------------------------


def seed_books(url: str) -> None:
    """Positions and prices to sell from, so that sells and exits get past the position check."""
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            for symbol, price in zip(KNOWN_SYMBOLS, ("231.40", "415.10", "457.25", "12.3456"), strict=True):
                cursor.execute("INSERT INTO accumulators (symbol, last_price) VALUES (%s, %s)", (symbol, price))
                for account in ACCOUNTS:
                    cursor.execute(
                        "INSERT INTO positions (account, symbol, quantity, average_price) VALUES (%s, %s, 500, %s)",
                        (account, symbol, price),
                    )
    finally:
        connection.close()


@pytest.fixture
def fuzz_run(make_fleet: Callable[..., Fleet], clean_database: str) -> Iterator[FuzzRun]:
    seed_books(clean_database)
    fleet = make_fleet(**FLEET_SETTINGS)
    fleet.start_api()
    books = BooksFingerprint(clean_database)
    run = FuzzRun(fleet.api_url, books)
    try:
        yield run
    finally:
        run.session.close()
        books.close()


def test_thousands_of_generated_requests_get_no_5xx_and_refusals_leave_the_books_untouched(fuzz_run: FuzzRun) -> None:
    run = fuzz_run
    schema = schemathesis.openapi.from_url(f"{run.api_url}/openapi.json")
    operations = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the API's own OpenAPI does not load: that is a failure too
        operations[f"{result.ok().method.upper()} {result.ok().path}"] = result.ok()
    missing = sorted(SPEC_ENDPOINTS - {*operations, WEBHOOK})

    for _ in range(ROUNDS):
        fuzz_webhook(run, WEBHOOK_ROUND)
        for label, operation in operations.items():
            if label != WEBHOOK:  # its body is not in the OpenAPI: fuzzed above with signed raw bytes
                fuzz_operation(run, label, operation, PER_OPERATION_ROUND)

    print(f"\nrequests per endpoint (overlay seed {run.seed}):")
    for label in sorted(run.sent):
        outcomes = {outcome: n for (name, outcome), n in sorted(run.outcomes.items()) if name == label}
        print(f"  {run.sent[label]:5d}  {label}  {outcomes}")
    print(f"  {sum(run.sent.values()):5d}  in all")
    print(f"  {sum(n for (_, code), n in run.statuses.items() if code >= 500):5d}  answered 5xx")
    if run.failures:
        pytest.fail(f"{len(run.failures)} kinds of failure:\n\n{run.report()}", pytrace=False)
    assert sum(run.sent.values()) >= 5000
    assert set(run.sent) == {*operations, WEBHOOK}
    assert min(run.sent.values()) >= 100
    # Refusals and acceptances both happened: the fuzzing got past auth into validation and storage.
    for label in run.sent:
        codes = {code for (name, code) in run.statuses if name == label}
        assert any(200 <= code < 300 for code in codes), f"{label} never accepted anything: {codes}"
    assert not missing, f"endpoints SPEC section 3 names are not in the OpenAPI: {missing}"
