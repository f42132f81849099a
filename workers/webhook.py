"""Webhook authentication and payload reading: signature over the raw body, exact decimals."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from models.domain.quantities import QuantityError, Side, parse_decimal
from models.domain.trades import IncomingTrade

SIGNATURE_SCHEME = "v1="
SYMBOL_PATTERN = r"^[A-Z0-9][A-Z0-9.\-/]{0,31}$"  # upper case, as the brokerages spell them
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The v1 signature a sender puts in X-Dustpan-Signature."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + digest


def verify_signature(
    secrets: list[str],
    timestamp: str | None,
    signature_header: str | None,
    body: bytes,
    now: int,
    tolerance: int,
) -> str | None:
    """None when authentic, else the reason for the 401. Any active secret may have signed it."""
    if not timestamp or not signature_header:
        return "missing X-Dustpan-Timestamp or X-Dustpan-Signature"
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return "X-Dustpan-Timestamp must be unix seconds"
    if abs(now - int(timestamp)) > tolerance:
        return f"timestamp is more than {tolerance} s from now"
    offered = [part.strip() for part in signature_header.split(",")]
    expected = [sign(secret, timestamp, body) for secret in secrets]
    # Compare every pair in constant time; do not stop early on a match.
    matched = False
    for candidate in offered:
        for good in expected:
            matched |= hmac.compare_digest(candidate.encode(), good.encode())
    return None if matched else "signature does not match"


def positive_decimal(field: str) -> Any:
    """Validator: an exact Decimal > 0 from a string or an exactly-parsed JSON number."""

    def read(value: Any) -> Decimal:
        try:
            number = parse_decimal(value, field=field)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
        if number <= 0:
            raise ValueError(f"{field} must be greater than 0")
        return number

    return BeforeValidator(read)


def _rfc3339(value: Any) -> Any:
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("executed_at must be an RFC 3339 timestamp with a time zone")
    return value


class TradeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
    symbol: Annotated[str, Field(pattern=SYMBOL_PATTERN)]
    side: Literal["buy", "sell"]
    quantity: Annotated[Decimal, positive_decimal("quantity")]
    price: Annotated[Decimal, positive_decimal("price")]
    executed_at: Annotated[AwareDatetime, BeforeValidator(_rfc3339)]

    def to_domain(self) -> IncomingTrade:
        return IncomingTrade(self.id, self.symbol, Side(self.side), self.quantity, self.price, self.executed_at)


class TradesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trades: list[TradeIn] = Field(min_length=1)


class PayloadError(Exception):
    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("invalid payload")
        self.details = details


def read_trades(body: bytes, max_trades: int) -> list[IncomingTrade]:
    """Parse the raw body; JSON numbers become Decimals from their text, never floats."""
    try:
        data = json.loads(body, parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise PayloadError([{"loc": [], "msg": f"body is not valid JSON: {exc}"}]) from None
    if isinstance(data, dict) and isinstance(data.get("trades"), list) and len(data["trades"]) > max_trades:
        raise PayloadError([{"loc": ["trades"], "msg": f"at most {max_trades} trades per request"}])
    try:
        payload = TradesIn.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(
            [{"loc": list(error["loc"]), "msg": error["msg"]} for error in exc.errors(include_url=False)]
        ) from None
    return [trade.to_domain() for trade in payload.trades]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def utc_seconds(moment: datetime) -> int:
    return int(moment.timestamp())
