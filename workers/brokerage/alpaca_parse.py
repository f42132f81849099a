"""Reading Alpaca Trading API v2 JSON into the port's types: exact Decimals, never floats.

Anything we cannot read is a ``MalformedAnswer``: a body we misunderstand must stop the caller,
not be guessed at, because every figure here ends up deciding what to buy or sell. It is an
unknown outcome, never a refusal: the caller looks the order up again later.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, NoReturn

from models.domain.symbols import canonical_symbol
from tasks.ports import AccountBalance, Asset, BrokerOrder, BrokerPosition, MalformedAnswer

Sign = Literal["any", "non-negative", "positive"]

_ORDER_TEXT_FIELDS = ("id", "client_order_id", "symbol", "side", "status")
_POSITION_SIDES = frozenset({"long", "short"})


def loads(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)


def _reject_constant(name: str) -> NoReturn:
    # json would otherwise turn NaN/Infinity into floats behind our back.
    raise ValueError(f"non-finite JSON constant {name}")


class _Fields:
    """One Alpaca JSON object; every complaint names the kind of object it came in."""

    def __init__(self, kind: str, payload: Any) -> None:
        if not isinstance(payload, dict):
            raise MalformedAnswer(f"malformed {kind} from broker: expected an object, got {payload!r:.200}")
        self._kind = kind
        self._payload: dict[str, Any] = payload

    def malformed(self, detail: str) -> MalformedAnswer:
        return MalformedAnswer(f"malformed {self._kind} from broker: {detail}")

    def _bad(self, name: str) -> MalformedAnswer:
        return self.malformed(f"{name}={self._payload.get(name)!r:.100}")

    def text(self, name: str) -> str:
        value = self._payload.get(name)
        if not isinstance(value, str) or not value:
            raise self._bad(name)
        return value

    def optional_text(self, name: str) -> str | None:
        value = self._payload.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self._bad(name)
        return value

    def flag(self, name: str) -> bool:
        # Strictly a JSON boolean: "false" is a truthy string, and tradable must never be guessed.
        value = self._payload.get(name)
        if not isinstance(value, bool):
            raise self._bad(name)
        return value

    def decimal(self, name: str, sign: Sign = "non-negative") -> Decimal | None:
        """Alpaca sends decimals as strings or null; numbers are accepted too, parsed exactly."""
        value = self._payload.get(name)
        if value is None:
            return None
        # bool is an int subclass, and True is not a quantity.
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            raise self._bad(name)
        try:
            number = Decimal(value)
        except InvalidOperation as exc:
            raise self._bad(name) from exc
        if not number.is_finite() or (sign == "non-negative" and number < 0) or (sign == "positive" and number <= 0):
            raise self._bad(name)
        return number

    def required_decimal(self, name: str, sign: Sign = "non-negative") -> Decimal:
        value = self.decimal(name, sign)
        if value is None:
            raise self.malformed(f"{name} is missing")
        return value


def parse_order(payload: Any) -> BrokerOrder:
    fields = _Fields("order", payload)
    text = {name: fields.text(name) for name in _ORDER_TEXT_FIELDS}
    return BrokerOrder(
        id=text["id"],
        client_order_id=text["client_order_id"],
        symbol=canonical_symbol(text["symbol"], crypto=payload.get("asset_class") == "crypto"),
        side=text["side"],
        quantity=fields.required_decimal("qty"),
        status=text["status"],
        filled_quantity=fields.required_decimal("filled_qty"),
        filled_average_price=fields.decimal("filled_avg_price"),
        replaced_by=fields.optional_text("replaced_by"),
    )


def parse_trade_price(payload: Any, symbol: str) -> Decimal:
    """The ``p`` of a Market Data v2 latest trade: ``{"symbol": ..., "trade": {"p": 187.43, ...}}``."""
    trade = payload.get("trade") if isinstance(payload, dict) else payload
    return _Fields(f"latest trade for {symbol}", trade).required_decimal("p", "positive")


def parse_crypto_trade_price(payload: Any, pair: str) -> Decimal:
    """The ``p`` of a crypto latest trade: ``{"trades": {"BTC/USD": {"p": 61000.5, ...}}}``."""
    trades = payload.get("trades") if isinstance(payload, dict) else None
    if not isinstance(trades, dict) or pair not in trades:
        raise MalformedAnswer(f"malformed crypto latest trades from broker: no trade for {pair}: {payload!r:.200}")
    return _Fields(f"latest trade for {pair}", trades[pair]).required_decimal("p", "positive")


def parse_account(payload: Any) -> AccountBalance:
    fields = _Fields("account", payload)
    # Margin accounts can owe cash and be under water, so only finiteness is checked here.
    return AccountBalance(
        cash=fields.required_decimal("cash", "any"),
        buying_power=fields.required_decimal("buying_power", "any"),
        equity=fields.required_decimal("equity", "any"),
    )


def parse_positions(payload: Any) -> list[BrokerPosition]:
    if not isinstance(payload, list):
        raise MalformedAnswer(f"malformed positions from broker: expected a list, got {payload!r:.200}")
    return [parse_position(item) for item in payload]


def parse_position(payload: Any) -> BrokerPosition:
    fields = _Fields("position", payload)
    quantity = fields.required_decimal("qty", "any")
    side = fields.text("side")
    if side not in _POSITION_SIDES:
        raise fields.malformed(f"side={side!r}")
    if side == "long" and quantity < 0:
        raise fields.malformed(f"long position with qty={quantity}")
    return BrokerPosition(
        # Positions glue a crypto pair (BTCUSD) where orders write BTC/USD: one symbol either way.
        symbol=canonical_symbol(fields.text("symbol"), crypto=payload.get("asset_class") == "crypto"),
        # Alpaca signs a short's qty itself; negating only a positive one reads either form right.
        quantity=-quantity if side == "short" and quantity > 0 else quantity,
        average_entry_price=fields.decimal("avg_entry_price"),
        current_price=fields.decimal("current_price"),
        market_value=fields.decimal("market_value", "any"),  # negative for a short
    )


def parse_asset(payload: Any) -> Asset:
    fields = _Fields("asset", payload)
    return Asset(
        symbol=canonical_symbol(fields.text("symbol"), crypto=payload.get("class") == "crypto"),
        tradable=fields.flag("tradable"),
        fractionable=fields.flag("fractionable"),
        # Alpaca sends these for crypto and leaves them out for most equities: None, not a guess.
        min_order_size=fields.decimal("min_order_size"),
        # A zero step would make every quantity "valid" (and break rounding), so it is malformed.
        min_trade_increment=fields.decimal("min_trade_increment", "positive"),
        price_increment=fields.decimal("price_increment", "positive"),
    )


__all__ = [
    "loads",
    "parse_account",
    "parse_asset",
    "parse_crypto_trade_price",
    "parse_order",
    "parse_position",
    "parse_positions",
    "parse_trade_price",
]
