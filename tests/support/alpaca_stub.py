"""A local stand-in for Alpaca's Trading API v2 (orders, account, positions, assets), over real HTTP.

Standard library only, so adapter tests exercise the real wire: sockets, timeouts, status codes
and JSON text. Orders fill the moment they are accepted and move cash and positions; knobs
shape the fill, and ``fail_next`` scripts infrastructure faults for the next requests, whatever
their endpoint.

    with AlpacaStub() as stub:
        stub.prices["AAPL"] = Decimal("123.456789")
        stub.fail_next("timeout_after_accept")
        AlpacaBrokerage(stub.url, stub.key_id, stub.secret_key, Decimal("0.5"))
"""

from __future__ import annotations

import json
import random
import sys
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

FAULT_KINDS = frozenset(
    {"500", "429", "403", "timeout", "timeout_after_accept", "malformed", "422_after_accept", "replaced"}
)
# Faults that only make sense on a state-changing call (an order POST, a position close): the
# change is made, the answer misleads.
_AFTER_ACCEPT = frozenset({"timeout_after_accept", "422_after_accept", "replaced"})
_UNPROCESSABLE = 40010001  # Alpaca's code for every 422 validation error


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # including the query string
    body: str

    def json(self) -> Any:
        return json.loads(self.body, parse_float=Decimal)


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    headers: tuple[tuple[str, str], ...] = ()


def _json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, json.dumps(payload), (("Content-Type", "application/json; charset=UTF-8"),))


def _error(status: int, code: int, message: str) -> Reply:
    return _json_reply(status, {"code": code, "message": message})


def _text(value: Decimal) -> str:
    return format(value, "f")


def position_json(symbol: str, qty: Decimal, avg_entry_price: Decimal, current_price: Decimal) -> dict[str, Any]:
    """An Alpaca position object; ``qty`` is signed, and negative means short, as Alpaca sends it."""
    return {
        "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-stub:{symbol}")),
        "symbol": symbol,
        "asset_class": "us_equity",
        "qty": _text(qty),
        "qty_available": _text(qty),
        "avg_entry_price": _text(avg_entry_price),
        "side": "long" if qty >= 0 else "short",
        "market_value": _text(qty * current_price),
        "cost_basis": _text(qty * avg_entry_price),
        "unrealized_pl": _text(qty * (current_price - avg_entry_price)),
        "current_price": _text(current_price),
    }


def asset_json(symbol: str) -> dict[str, Any]:
    """A tradable, fractionable US equity; like Alpaca's, it carries no crypto-only size fields."""
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-stub:{symbol}")),
        "class": "us_equity",
        "exchange": "NASDAQ",
        "symbol": symbol,
        "name": f"{symbol} (stub)",
        "status": "active",
        "tradable": True,
        "shortable": True,
        "fractionable": True,
    }


class AlpacaStub:
    """Knobs (set them any time; they are read per request):

    - ``prices[symbol]``: fill price, ``default_price`` (100) for symbols not listed
    - ``partial_fill_ratio``: fill ``floor(qty * ratio)`` whole shares, then "canceled"
    - ``reject_symbols``: accepted with 200, status "rejected", nothing filled
    - ``unknown_symbols``: 422 ``asset "X" not found``
    - ``buying_power``: a buy whose notional exceeds it gets 403 "insufficient buying power";
      the account reports it as buying power (cash when None)
    - ``cash``: the account's cash; every fill moves it, and equity is cash plus market values
    - ``positions[symbol]``: Alpaca position objects (``position_json``), kept up to date by
      fills; set one to hold a position no order made
    - ``assets[symbol]``: fields served over ``asset_json(symbol)``; symbols not listed get 404
    - ``retry_after_seconds``: the ``Retry-After`` header sent with a scripted 429 (None: omit)
    - ``stall_seconds``: how long the timeout faults sleep; keep it above the client timeout
    - ``order_fault_percent[kind]``: share (whole percent) of order POSTs that get this fault,
      drawn from ``seed``; ``faults_injected`` counts every fault served, scripted or drawn
    - ``resent_after_accept``: order POSTs whose ``client_order_id`` the stub had already accepted
      (a 5xx accepted nothing, so a POST after it is not one of these)
    - ``lookup_fault_percent[kind]``: likewise for ``GET /v2/orders:by_client_order_id`` (e.g. "403")
    - ``account_refusal``: every order POST is answered 403 with this message (e.g. "forbidden.")
    - ``sick_symbols[symbol]``: every order POST for the symbol gets this fault (e.g. "timeout" or
      "500": nothing stored), ahead of any scripted or drawn one; lookups answer as usual
    - ``hold(symbols)``: these symbols' order POSTs are accepted and their answers held (a hang)
      until ``release_held()``
    - fault "403": Alpaca's bare ``{"message": "forbidden."}``, whatever the endpoint
    - fault "422_after_accept": the order is stored, the answer is a 422 that is not a duplicate
    - fault "replaced": the order is stored as ``replaced`` with nothing filled; its fill lands on
      a ``replaced_by`` order under another client order id (Alpaca's cancel-replace)
    """

    def __init__(self, key_id: str = "stub-key-id", secret_key: str = "stub-secret-key", seed: int = 0) -> None:
        self.key_id = key_id
        self.secret_key = secret_key
        self.prices: dict[str, Decimal] = {}
        self.default_price = Decimal("100")
        self.partial_fill_ratio: Decimal | None = None
        self.reject_symbols: set[str] = set()
        self.unknown_symbols: set[str] = set()
        self.buying_power: Decimal | None = None
        self.cash = Decimal("1000000")
        self.positions: dict[str, dict[str, Any]] = {}
        self.assets: dict[str, dict[str, Any]] = {}
        self.retry_after_seconds: int | None = 1
        self.stall_seconds = 3.0
        self.requests: list[RecordedRequest] = []
        self.posts_per_client_order_id: Counter[str] = Counter()
        self.orders: dict[str, dict[str, Any]] = {}  # by Alpaca's order id
        self.order_fault_percent: dict[str, int] = {}
        self.lookup_fault_percent: dict[str, int] = {}
        self.account_refusal: str | None = None
        self.sick_symbols: dict[str, str] = {}
        self.hold_symbols: set[str] = set()  # order POSTs for these are stored, then held until release_held()
        self.held_posts: Counter[str] = Counter()
        self._release_held = threading.Event()
        self.faults_injected: Counter[str] = Counter()
        self.resent_after_accept: Counter[str] = Counter()
        self._by_client_order_id: dict[str, dict[str, Any]] = {}
        self._rng = random.Random(seed)
        self._faults: deque[str] = deque()
        self._lookup_faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> AlpacaStub:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers that are stalling on purpose
        self._release_held.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stub first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- scripting -------------------------------------------------------------------------

    def fail_next(self, kind: str, count: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; choose from {sorted(FAULT_KINDS)}")
        with self._lock:
            self._faults.extend([kind] * count)

    def hold(self, symbols: Iterable[str]) -> None:
        """Hold the order POSTs of these symbols from now on, also after a ``release_held()``: each
        order is stored (accepted), then its answer waits for ``release_held()``, so the client
        times out with the order at the broker. Setting ``hold_symbols`` alone holds until the first release."""
        self._release_held.clear()
        self.hold_symbols = set(symbols)

    def release_held(self) -> None:
        """Answer every held order POST (and hold no more)."""
        self.hold_symbols = set()
        self._release_held.set()

    def fail_next_lookup(self, kind: str, count: int = 1) -> None:
        """Like ``fail_next``, for the next order lookups by client order id only."""
        if kind not in FAULT_KINDS - _AFTER_ACCEPT:
            raise ValueError(f"{kind!r} is not a fault a lookup can answer")
        with self._lock:
            self._lookup_faults.extend([kind] * count)

    def order_by_client_order_id(self, client_order_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._find_by_client_order_id(client_order_id)

    # -- request handling (called from handler threads) -------------------------------------

    def handle(self, method: str, path: str, headers: Any, body: str) -> tuple[str | None, Reply | None]:
        """Record the request and decide the reply; the fault returned tells the handler how to
        misbehave on the wire. A None reply means: answer nothing at all."""
        with self._lock:
            self.requests.append(RecordedRequest(method, path, body))
            order_post = method == "POST" and urlsplit(path).path == "/v2/orders"
            lookup = method == "GET" and urlsplit(path).path == "/v2/orders:by_client_order_id"
            if order_post:
                self._count_post(body)
            # A scripted after-accept fault waits for the next order POST: there is nothing to accept before.
            state_change = order_post or (method == "DELETE" and urlsplit(path).path.startswith("/v2/positions/"))
            scripted = bool(self._faults) and (state_change or self._faults[0] not in _AFTER_ACCEPT)
            fault = self.sick_symbols.get(_posted_symbol(body)) if order_post and self.sick_symbols else None
            fault = fault or (self._faults.popleft() if scripted else None)
            if fault is None and order_post:
                fault = self._draw_fault(self.order_fault_percent)
            elif fault is None and lookup:
                fault = self._lookup_faults.popleft() if self._lookup_faults else None
                fault = fault or self._draw_fault(self.lookup_fault_percent)
            if fault is not None:
                self.faults_injected[fault] += 1
        if fault in ("500", "429", "403", "malformed", "timeout"):
            return fault, _fault_reply(fault, self.retry_after_seconds)
        if headers.get("APCA-API-KEY-ID") != self.key_id or headers.get("APCA-API-SECRET-KEY") != self.secret_key:
            return fault, _error(401, 40110000, "request is not authorized")
        return fault, self._route(method, path, body, fault)

    def _draw_fault(self, percents: dict[str, int]) -> str | None:
        if not percents:
            return None
        draw = self._rng.randrange(100)
        for kind, percent in sorted(percents.items()):
            if draw < percent:
                return kind
            draw -= percent
        return None

    def stall(self) -> None:
        self._stopping.wait(self.stall_seconds)

    def _count_post(self, body: str) -> None:
        try:
            client_order_id = json.loads(body).get("client_order_id")
        except (ValueError, AttributeError):
            return
        if isinstance(client_order_id, str):
            self.posts_per_client_order_id[client_order_id] += 1

    def _route(self, method: str, path: str, body: str, fault: str | None = None) -> Reply:
        parts = urlsplit(path)
        if method == "POST" and parts.path == "/v2/orders":
            return self._submit(body, fault)
        if method == "GET" and parts.path == "/v2/orders:by_client_order_id":
            client_order_id = parse_qs(parts.query).get("client_order_id", [""])[0]
            return self._found(self.order_by_client_order_id(client_order_id))
        if method == "GET" and parts.path.startswith("/v2/orders/"):
            with self._lock:
                return self._found(self.orders.get(parts.path.removeprefix("/v2/orders/")))
        if method == "GET" and parts.path == "/v2/account":
            with self._lock:
                return _json_reply(200, self._account())
        if method == "GET" and parts.path == "/v2/positions":
            with self._lock:
                return _json_reply(200, list(self.positions.values()))
        if method == "DELETE" and parts.path.startswith("/v2/positions/"):
            return self._close(unquote(parts.path.removeprefix("/v2/positions/")), parse_qs(parts.query))
        if method == "GET" and parts.path.startswith("/v2/assets/"):
            return self._asset(unquote(parts.path.removeprefix("/v2/assets/")))
        if method == "GET" and parts.path.startswith("/v2/stocks/") and parts.path.endswith("/trades/latest"):
            symbol = parts.path.removeprefix("/v2/stocks/").removesuffix("/trades/latest")
            price = self.prices.get(symbol, self.default_price)
            # Market Data v2 sends the price as a JSON number.
            return Reply(
                200,
                f'{{"symbol": "{symbol}", "trade": {{"t": "2026-11-02T14:30:00Z", "p": {price}, '
                f'"s": 100, "x": "V", "i": 1}}}}',
                (("Content-Type", "application/json"),),
            )
        # Alpaca's Go front end answers unknown routes with a plain-text page, not JSON.
        return Reply(404, "404 page not found", (("Content-Type", "text/plain"),))

    @staticmethod
    def _found(order: dict[str, Any] | None) -> Reply:
        return _json_reply(200, order) if order is not None else _error(404, 40410000, "order not found")

    def _submit(self, body: str, fault: str | None = None) -> Reply:
        try:
            payload = json.loads(body, parse_float=Decimal)
        except ValueError:
            return _error(400, 40010000, "request body format is invalid")
        if self.account_refusal is not None:
            return _error(403, 40310000, self.account_refusal)
        refusal = self._refusal(payload)
        if refusal is not None:
            return refusal
        with self._lock:
            if self._find_by_client_order_id(payload.get("client_order_id", "")) is not None:
                self.resent_after_accept[payload["client_order_id"]] += 1
                return _error(422, _UNPROCESSABLE, "client_order_id must be unique")
            order = self._store_replaced(payload) if fault == "replaced" else self._store(self._new_order(payload))
        if fault == "422_after_accept":
            return _error(422, 42210000, "potential wash trade detected. use complex orders")
        if order["symbol"] in self.hold_symbols:  # accepted; the answer waits for the test
            with self._lock:
                self.held_posts[order["symbol"]] += 1
            self._release_held.wait(300)
        return _json_reply(200, order)

    def _store_replaced(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Cancel-replace: the original reads ``replaced`` and 0 filled; the fill is on its replacement."""
        replacement = self._store(self._new_order({**payload, "client_order_id": str(uuid.uuid4())}))
        original = self._new_order({**payload}, fill=False)
        original.update(status="replaced", replaced_by=replacement["id"], replaced_at=replacement["created_at"])
        replacement["replaces"] = original["id"]
        return self._store(original)

    def _refusal(self, payload: Any) -> Reply | None:
        if not isinstance(payload, dict):
            return _error(400, 40010000, "request body format is invalid")
        qty = _decimal_or_none(payload.get("qty"))
        if qty is None or qty <= 0:
            return _error(422, _UNPROCESSABLE, "qty must be > 0")
        if payload.get("side") not in ("buy", "sell"):
            return _error(422, _UNPROCESSABLE, "invalid side")
        if payload.get("type") != "market":
            return _error(422, _UNPROCESSABLE, "the stub only supports market orders")
        symbol = payload.get("symbol")
        if not isinstance(symbol, str) or symbol in self.unknown_symbols:
            return _error(422, _UNPROCESSABLE, f'asset "{symbol}" not found')
        notional = qty * self.prices.get(symbol, self.default_price)
        if payload["side"] == "buy" and self.buying_power is not None and notional > self.buying_power:
            return _error(403, 40310000, "insufficient buying power")
        return None

    def _close(self, symbol: str, query: dict[str, list[str]]) -> Reply:
        with self._lock:
            held, _ = self._holding(symbol)
            if held == 0:
                return _error(404, 40410000, "position does not exist")
            qty = _decimal_or_none(query["qty"][0]) if "qty" in query else abs(held)
            if qty is None or qty <= 0:
                return _error(422, _UNPROCESSABLE, "qty must be > 0")
            if qty > abs(held):
                available = f"requested: {_text(qty)}, available: {_text(abs(held))}"
                return _error(403, 40310000, f"insufficient qty available for order ({available})")
            order = self._store(self._new_order({"symbol": symbol, "qty": qty, "side": "sell" if held > 0 else "buy"}))
        return _json_reply(200, order)

    def _asset(self, symbol: str) -> Reply:
        with self._lock:
            fields = self.assets.get(symbol)
        if fields is None or symbol in self.unknown_symbols:
            return _error(404, 40410000, f"asset not found for {symbol}")
        return _json_reply(200, {**asset_json(symbol), **fields})

    def _new_order(self, payload: dict[str, Any], fill: bool = True) -> dict[str, Any]:
        symbol, qty = payload["symbol"], Decimal(str(payload["qty"]))
        filled, status = self._fill(symbol, qty) if fill else (Decimal(0), "new")
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        price = self.prices.get(symbol, self.default_price)
        self._apply_fill(symbol, payload["side"], filled, price)
        return {
            "id": str(uuid.uuid4()),
            "client_order_id": payload.get("client_order_id") or str(uuid.uuid4()),
            "created_at": now,
            "updated_at": now,
            "submitted_at": now,
            "filled_at": now if status == "filled" else None,
            "expired_at": None,
            "canceled_at": now if status == "canceled" else None,
            "failed_at": now if status == "rejected" else None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-stub:{symbol}")),
            "symbol": symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": _text(qty),
            "filled_qty": _text(filled),
            "filled_avg_price": _text(price) if filled > 0 else None,
            "order_class": "",
            "order_type": "market",
            "type": "market",
            "side": payload["side"],
            "time_in_force": payload.get("time_in_force", "day"),
            "limit_price": None,
            "stop_price": None,
            "status": status,
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
        }

    def _store(self, order: dict[str, Any]) -> dict[str, Any]:
        self.orders[order["id"]] = order
        self._by_client_order_id[order["client_order_id"]] = order
        return order

    def _fill(self, symbol: str, qty: Decimal) -> tuple[Decimal, str]:
        if symbol in self.reject_symbols:
            return Decimal("0"), "rejected"
        if self.partial_fill_ratio is None:
            return qty, "filled"
        filled = (qty * self.partial_fill_ratio).quantize(Decimal("1"), rounding=ROUND_DOWN)
        return (filled, "filled") if filled >= qty else (filled, "canceled")

    def _find_by_client_order_id(self, client_order_id: str) -> dict[str, Any] | None:
        return self._by_client_order_id.get(client_order_id)

    def _apply_fill(self, symbol: str, side: str, filled: Decimal, price: Decimal) -> None:
        if filled == 0:
            return
        signed = filled if side == "buy" else -filled
        self.cash -= signed * price
        held, entry = self._holding(symbol)
        now_held = held + signed
        if now_held == 0:
            self.positions.pop(symbol, None)
            return
        if held == 0 or (held > 0) != (now_held > 0):  # opened, or flipped from long to short
            entry = price
        elif (signed > 0) == (held > 0):  # added to it: the entry price is the weighted average
            entry = (held * entry + signed * price) / now_held
        self.positions[symbol] = position_json(symbol, now_held, entry, price)

    def _holding(self, symbol: str) -> tuple[Decimal, Decimal]:
        """Signed quantity and entry price, read back from the position object (tests may set one)."""
        position = self.positions.get(symbol, {})
        qty = _decimal_or_none(position.get("qty")) or Decimal(0)
        if position.get("side") == "short" and qty > 0:
            qty = -qty
        return qty, _decimal_or_none(position.get("avg_entry_price")) or Decimal(0)

    def _account(self) -> dict[str, Any]:
        values = (_decimal_or_none(p.get("market_value")) for p in self.positions.values())
        equity = self.cash + sum((v for v in values if v is not None), Decimal(0))
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-stub:{self.key_id}")),
            "account_number": "PA0STUB0000",
            "status": "ACTIVE",
            "currency": "USD",
            "buying_power": _text(self.buying_power if self.buying_power is not None else self.cash),
            "cash": _text(self.cash),
            "equity": _text(equity),
            "portfolio_value": _text(equity),
            "trading_blocked": False,
        }


def _decimal_or_none(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _posted_symbol(body: str) -> str:
    try:
        symbol = json.loads(body).get("symbol")
    except (ValueError, AttributeError):
        return ""
    return symbol if isinstance(symbol, str) else ""


def _fault_reply(fault: str, retry_after: int | None) -> Reply | None:
    if fault == "500":
        return _error(500, 50010000, "internal server error")
    if fault == "403":
        return _json_reply(403, {"message": "forbidden."})  # Alpaca's bare body, reported on every endpoint
    if fault == "429":
        headers = (("Retry-After", str(retry_after)),) if retry_after is not None else ()
        return Reply(429, json.dumps({"code": 42910000, "message": "rate limit exceeded"}), headers)
    if fault == "malformed":
        return Reply(200, "<html><body>502 Bad Gateway</body></html>", (("Content-Type", "application/json"),))
    return None  # "timeout": never answer


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up mid-request is a scripted fault, not a stub bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(stub: AlpacaStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its load balancer
        timeout = 10  # idle keep-alive connections must not pin a thread forever
        # The status line and headers go out before the body, in two writes: with Nagle on, the
        # body waits for the client's delayed ACK (40 ms on Linux) on every call. Real APIs
        # answer in one flight, and so does the stub.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            fault, reply = stub.handle(self.command, self.path, self.headers, body)
            if fault in ("timeout", "timeout_after_accept"):
                # The order (if any) is already stored; the client gives up before we answer.
                stub.stall()
                self.close_connection = True
            if reply is not None:
                self._write(reply)

        def _write(self, reply: Reply) -> None:
            data = reply.body.encode("utf-8")
            try:
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client timed out and hung up; that is the point
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean; stub.requests is the log

    return Handler
