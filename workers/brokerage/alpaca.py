"""Alpaca Trading API v2 adapter: orders, account, positions and assets, over one sync httpx client.

Every method makes exactly one HTTP call (following a replacement is the caller's job) and
translates whatever goes wrong into the port's exception family, by what the answer is evidence
of. A read that fails says nothing about the broker's state, so any non-2xx answer to a read
(a 403 or 422 included) is a ``TemporaryError``. Only the calls that change state (placing an
order, closing a position) can be refused, and only when Alpaca's own body says so. Retrying is
the caller's job, because only the caller knows to look the order up first. Reading the JSON
bodies lives in ``alpaca_parse``; what an error body means lives in ``_refusal``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

from models.domain.symbols import canonical_symbol, is_crypto
from tasks.ports import (
    AccountBalance,
    AccountRefused,
    Asset,
    Brokerage,
    BrokerageError,
    BrokerageMisconfigured,
    BrokerOrder,
    BrokerPosition,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    MalformedAnswer,
    NotFound,
    OrderRequest,
    RateLimited,
    TemporaryError,
)
from workers.brokerage.alpaca_parse import (
    loads,
    parse_account,
    parse_asset,
    parse_crypto_trade_price,
    parse_order,
    parse_positions,
    parse_trade_price,
)

_SIDES = frozenset({"buy", "sell"})
# Alpaca sends 40010001 for every 422, so a duplicate is told by its status (409) or its text;
# the pattern takes rewordings ("client order id already exists", "duplicate client_order_id").
_DUPLICATE = re.compile(r"client[ _]?order[ _]?id.*(unique|exist|duplicate|already|taken)|duplicate", re.IGNORECASE)
# Refusals of the account rather than of the order: Alpaca answers these for every order alike.
_ACCOUNT_WIDE = re.compile(
    r"not allowed for (this )?account|account is not allowed|account (is )?(blocked|restricted|suspended|"
    r"disabled|closed|not (active|authorized|approved|enabled))|trading (is )?(blocked|suspended|disabled)|"
    r"not (permitted|authorized|allowed) to trade|forbidden",
    re.IGNORECASE,
)
_INSUFFICIENT = re.compile(r"insufficient", re.IGNORECASE)


class AlpacaBrokerage(Brokerage):
    """``trading_url`` is the API root, e.g. ``https://paper-api.alpaca.markets`` (no ``/v2``)."""

    def __init__(
        self,
        trading_url: str,
        key_id: str,
        secret_key: str,
        timeout_seconds: Decimal,
        transport: httpx.BaseTransport | None = None,
        data_url: str | None = None,
        connect_timeout_seconds: Decimal | None = None,
        clock: Callable[[], float] = time.time,  # float-ok: unix seconds, for x-ratelimit-reset
    ) -> None:
        for name, value in (("timeout_seconds", timeout_seconds), ("connect_timeout_seconds", connect_timeout_seconds)):
            if value is not None and (not value.is_finite() or value <= 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        connect = connect_timeout_seconds or timeout_seconds
        # httpx takes float seconds; these are durations, not money, so the floats are harmless.
        self._client = httpx.Client(
            base_url=trading_url,
            headers={"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret_key},
            timeout=httpx.Timeout(float(timeout_seconds), connect=float(connect)),  # float-ok: durations
            transport=transport,
        )
        # Market Data lives on its own host; paths are absolute URLs on the same client.
        self._data_url = (data_url or trading_url).rstrip("/")
        self._clock = clock

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AlpacaBrokerage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- state-changing calls: the only ones that can be refused ----------------------------

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        what = "POST /v2/orders"
        response = self._send("POST", "/v2/orders", json=_order_body(request))
        if not response.is_success:
            raise self._refusal(response, what)
        return parse_order(_json(response, what))

    def close_position(self, symbol: str, quantity: Decimal | None = None) -> BrokerOrder:
        params = None if quantity is None else {"qty": _quantity_text(quantity)}
        what = f"DELETE /v2/positions/{symbol}"
        response = self._send("DELETE", f"/v2/positions/{_path_symbol(symbol)}", params=params)
        if response.status_code == 404:
            _require_alpaca_json(response)
            raise InvalidOrder(f"no open {symbol} position to close: {_error_message(response)}")
        if not response.is_success:
            raise self._refusal(response, what)
        return parse_order(_json(response, what))

    # -- reads: any failure is an unknown outcome --------------------------------------------

    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        what = "GET /v2/orders:by_client_order_id"
        response = self._send("GET", "/v2/orders:by_client_order_id", params={"client_order_id": client_order_id})
        if response.status_code == 404:
            _require_alpaca_json(response)  # a wrong trading_url must not read as "never ordered"
            return None
        return parse_order(self._read(response, what))

    def get_order(self, order_id: str) -> BrokerOrder:
        what = f"GET /v2/orders/{order_id}"
        return parse_order(self._read(self._send("GET", f"/v2/orders/{quote(order_id, safe='')}"), what))

    def latest_price(self, symbol: str) -> Decimal:
        if is_crypto(symbol):
            pair = canonical_symbol(symbol)
            url = f"{self._data_url}/v1beta3/crypto/us/latest/trades"
            response = self._send("GET", url, params={"symbols": pair})
            return parse_crypto_trade_price(self._read(response, f"GET crypto latest trade {pair}"), pair)
        url = f"{self._data_url}/v2/stocks/{quote(symbol, safe='')}/trades/latest"
        response = self._send("GET", url)
        if response.status_code == 404 and _is_alpaca_error(response):
            raise NotFound(f"no market data for {symbol}: {_error_message(response)}")
        return parse_trade_price(self._read(response, f"GET latest trade {symbol}"), symbol)

    def get_account(self) -> AccountBalance:
        return parse_account(self._read(self._send("GET", "/v2/account"), "GET /v2/account"))

    def list_positions(self) -> list[BrokerPosition]:
        return parse_positions(self._read(self._send("GET", "/v2/positions"), "GET /v2/positions"))

    def get_asset(self, symbol: str) -> Asset | None:
        response = self._send("GET", f"/v2/assets/{_path_symbol(symbol)}")
        if response.status_code == 404:
            _require_alpaca_json(response)  # a wrong trading_url must not read as "unknown symbol"
            return None
        return parse_asset(self._read(response, f"GET /v2/assets/{symbol}"))

    def ping(self) -> None:
        self._read(self._send("GET", "/v2/account"), "GET /v2/account")

    # -- the wire ------------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP call; a transport failure is an unknown outcome, a bad URL a misconfiguration."""
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.UnsupportedProtocol as exc:  # a transport error, but a misconfigured URL
            raise BrokerageMisconfigured(f"{method} {path}: {exc}") from exc
        except httpx.TransportError as exc:  # timeouts, refused or dropped connections
            raise TemporaryError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise TemporaryError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    def _read(self, response: httpx.Response, what: str) -> Any:
        """The JSON of a successful read; any other answer says nothing about the broker's state."""
        if response.is_success:
            return _json(response, what)
        shared = self._shared_failure(response, what)
        if shared is not None:
            raise shared
        raise TemporaryError(f"{what}: {response.status_code} {_error_message(response)} (outcome unknown)")

    def _refusal(self, response: httpx.Response, what: str) -> BrokerageError:
        """What a non-2xx answer to a state-changing call is evidence of."""
        shared = self._shared_failure(response, what)
        if shared is not None:
            return shared
        status, message = response.status_code, _error_message(response)
        text = f"{what}: {status} {message}"
        if status == 409 or (status in (400, 422) and _DUPLICATE.search(message)):
            return DuplicateClientOrderId(text)
        if not _is_alpaca_error(response):
            # A proxy's page, not Alpaca's word: the request may or may not have reached the broker.
            return TemporaryError(f"{text} (not an Alpaca answer: outcome unknown)")
        if status == 403:
            return InsufficientFunds(text) if _INSUFFICIENT.search(message) else AccountRefused(text)
        if _ACCOUNT_WIDE.search(message):
            return AccountRefused(text)
        if status in (400, 404, 422):
            return InvalidOrder(text)
        return TemporaryError(f"{text} (outcome unknown)")

    def _shared_failure(self, response: httpx.Response, what: str) -> BrokerageError | None:
        """The answers every endpoint shares: server errors, rate limits, refused keys."""
        status = response.status_code
        if status >= 500:
            return TemporaryError(f"{what}: broker answered {status}")
        if status == 429:
            wait = _rate_limit_wait(response, self._clock())
            return RateLimited(f"{what}: rate limited (retry after {wait}s)", wait)
        if status == 401:
            return BrokerageMisconfigured(f"{what}: broker refused our API keys (401)")
        if status < 400:
            return MalformedAnswer(f"{what}: unexpected HTTP status {status}")
        return None


def _rate_limit_wait(response: httpx.Response, now: float) -> int | None:  # float-ok: unix seconds
    """Seconds to wait: Retry-After when sent, else Alpaca's ``x-ratelimit-reset`` (unix seconds)."""
    retry_after = response.headers.get("Retry-After", "").strip()
    if retry_after.isdigit():
        return int(retry_after)
    reset = response.headers.get("X-RateLimit-Reset", "").strip()
    if reset.isdigit():
        return max(1, int(reset) - int(now))
    return None


def _path_symbol(symbol: str) -> str:
    return quote(canonical_symbol(symbol), safe="")


def _is_alpaca_error(response: httpx.Response) -> bool:
    try:
        payload = loads(response.text)
    except ValueError:
        return False
    return isinstance(payload, dict) and isinstance(payload.get("message"), str)


def _require_alpaca_json(response: httpx.Response) -> None:
    # "Not found" is a statement about the broker's state (no such order: safe to send again; no
    # such asset or position), so only Alpaca's own JSON 404 counts; a bare 404 page means a
    # wrong trading_url, not a missing thing.
    try:
        payload = loads(response.text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise BrokerageMisconfigured(f"404 without an Alpaca body (is trading_url right?): {response.text[:200]}")


def _quantity_text(quantity: Decimal) -> str:
    # Fail before any I/O: a bad quantity must never reach the broker.
    if not quantity.is_finite() or quantity <= 0:
        raise InvalidOrder(f"quantity must be a positive number, got {quantity}")
    # Fixed-point text: str() would send 1E+2, and a float would not be exact.
    return format(quantity, "f")


def _order_body(request: OrderRequest) -> dict[str, str]:
    quantity = _quantity_text(request.quantity)
    if request.side not in _SIDES:
        raise InvalidOrder(f"side must be 'buy' or 'sell', got {request.side!r}")
    return {
        "symbol": canonical_symbol(request.symbol),
        "qty": quantity,
        "side": request.side,
        "type": "market",
        # Crypto orders take gtc or ioc only; equities a day order.
        "time_in_force": "gtc" if is_crypto(request.symbol) else "day",
        "client_order_id": request.client_order_id,
    }


def _error_message(response: httpx.Response) -> str:
    """Alpaca's ``message`` field, or the start of the raw body when it is not Alpaca JSON."""
    try:
        payload = loads(response.text)
    except ValueError:
        return response.text[:200]
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return str(payload["message"])
    return response.text[:200]


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return loads(response.text)
    except ValueError as exc:
        raise MalformedAnswer(f"{what}: broker answered {response.status_code} with a non-JSON body") from exc


__all__ = ["AlpacaBrokerage"]
