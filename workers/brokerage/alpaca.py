"""Alpaca Trading API v2 adapter: orders, account, positions and assets, over one sync httpx client.

Every method makes exactly one HTTP call and translates whatever goes wrong into the port's
exception family; retrying is the caller's job, because only the caller knows whether to look
the order up first (a timeout on ``POST /v2/orders`` or ``DELETE /v2/positions/X`` says nothing
about whether it was accepted). Reading the JSON bodies lives in ``alpaca_parse``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NoReturn
from urllib.parse import quote

import httpx

from workers.brokerage.alpaca_parse import (
    loads,
    parse_account,
    parse_asset,
    parse_order,
    parse_positions,
    parse_trade_price,
)
from workers.brokerage.base import (
    AccountBalance,
    Asset,
    Brokerage,
    BrokerOrder,
    BrokerPosition,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    OperationalError,
    OrderRequest,
    RateLimited,
    TemporaryError,
)

# Alpaca's 422 text for a reused client_order_id; it is the only way to tell this case apart.
_DUPLICATE_MESSAGE = "client_order_id must be unique"
_SIDES = frozenset({"buy", "sell"})


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
    ) -> None:
        if not timeout_seconds.is_finite() or timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be a positive number, got {timeout_seconds}")
        # httpx takes float seconds; this is a duration, not money, so the float is harmless.
        self._client = httpx.Client(
            base_url=trading_url,
            headers={"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret_key},
            timeout=httpx.Timeout(float(timeout_seconds)),  # float-ok: a duration
            transport=transport,
        )
        # Market Data v2 lives on its own host; paths are absolute URLs on the same client.
        self._data_url = (data_url or trading_url).rstrip("/")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AlpacaBrokerage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        body = _order_body(request)
        response = self._send("POST", "/v2/orders", json=body)
        if response.status_code == 404:
            _raise_for_client_error(response, f"order refused: {_error_message(response)}")
        return parse_order(_ok_json(response))

    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        response = self._send("GET", "/v2/orders:by_client_order_id", params={"client_order_id": client_order_id})
        if response.status_code == 404:
            _require_alpaca_json(response)
            return None
        return parse_order(_ok_json(response))

    def get_order(self, order_id: str) -> BrokerOrder:
        response = self._send("GET", f"/v2/orders/{quote(order_id, safe='')}")
        if response.status_code == 404:
            # The id came from Alpaca itself, so not finding it means something is badly wrong.
            raise OperationalError(f"broker does not know order {order_id}: {_error_message(response)}")
        return parse_order(_ok_json(response))

    def latest_price(self, symbol: str) -> Decimal:
        response = self._send("GET", f"{self._data_url}/v2/stocks/{quote(symbol, safe='')}/trades/latest")
        if response.status_code == 404:
            raise InvalidOrder(f"no market data for {symbol}: {_error_message(response)}")
        return parse_trade_price(_ok_json(response), symbol)

    def get_account(self) -> AccountBalance:
        return parse_account(_ok_json(self._send("GET", "/v2/account")))

    def list_positions(self) -> list[BrokerPosition]:
        return parse_positions(_ok_json(self._send("GET", "/v2/positions")))

    def close_position(self, symbol: str, quantity: Decimal | None = None) -> BrokerOrder:
        params = None if quantity is None else {"qty": _quantity_text(quantity)}
        response = self._send("DELETE", f"/v2/positions/{quote(symbol, safe='')}", params=params)
        if response.status_code == 404:
            _require_alpaca_json(response)
            raise InvalidOrder(f"no open {symbol} position to close: {_error_message(response)}")
        return parse_order(_ok_json(response))

    def get_asset(self, symbol: str) -> Asset | None:
        response = self._send("GET", f"/v2/assets/{quote(symbol, safe='')}")
        if response.status_code == 404:
            _require_alpaca_json(response)  # a wrong trading_url must not read as "unknown symbol"
            return None
        return parse_asset(_ok_json(response))

    def ping(self) -> None:
        _ok_json(self._send("GET", "/v2/account"))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP call; transport failures and the status codes every endpoint shares are
        translated here, leaving 2xx and 404 (whose meaning depends on the endpoint) to the caller."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.UnsupportedProtocol as exc:  # a transport error, but a misconfigured URL
            raise OperationalError(f"{method} {path}: {exc}") from exc
        except httpx.TransportError as exc:  # timeouts, refused or dropped connections
            raise TemporaryError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise OperationalError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404 or response.is_success:
            return response
        _raise_for_status(response, f"{method} {path}")


def _require_alpaca_json(response: httpx.Response) -> None:
    # "Not found" is a statement about the broker's state (no such order: safe to send again; no
    # such asset or position), so only Alpaca's own JSON 404 counts; a bare 404 page means a
    # wrong trading_url, not a missing thing.
    try:
        payload = loads(response.text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise OperationalError(f"404 without an Alpaca body (is trading_url right?): {response.text[:200]}")


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
        "symbol": request.symbol,
        "qty": quantity,
        "side": request.side,
        "type": "market",
        "time_in_force": "day",
        "client_order_id": request.client_order_id,
    }


def _raise_for_status(response: httpx.Response, what: str) -> NoReturn:
    status = response.status_code
    if status >= 500:
        raise TemporaryError(f"{what}: broker answered {status}")
    if status == 429:
        retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
        raise RateLimited(f"{what}: rate limited (retry after {retry_after}s)", retry_after)
    if status == 401:
        raise OperationalError(f"{what}: broker refused our API keys (401)")
    if 400 <= status < 500:
        _raise_for_client_error(response, f"{what}: {status} {_error_message(response)}")
    raise OperationalError(f"{what}: unexpected HTTP status {status}")


def _raise_for_client_error(response: httpx.Response, text: str) -> NoReturn:
    if response.status_code == 403:
        raise InsufficientFunds(text)
    if response.status_code == 422 and _DUPLICATE_MESSAGE in _error_message(response):
        raise DuplicateClientOrderId(text)
    raise InvalidOrder(text)


def _retry_after_seconds(header: str | None) -> int | None:
    # Only the delta-seconds form is honoured; an HTTP-date leaves the wait to the caller.
    if header is None or not header.strip().isdigit():
        return None
    return int(header.strip())


def _error_message(response: httpx.Response) -> str:
    """Alpaca's ``message`` field, or the start of the raw body when it is not Alpaca JSON."""
    try:
        payload = loads(response.text)
    except ValueError:
        return response.text[:200]
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return str(payload["message"])
    return response.text[:200]


def _ok_json(response: httpx.Response) -> Any:
    if not response.is_success:
        raise OperationalError(f"unexpected HTTP status {response.status_code}")
    try:
        return loads(response.text)
    except ValueError as exc:
        raise OperationalError(f"broker answered {response.status_code} with a non-JSON body") from exc


__all__ = ["AlpacaBrokerage"]
