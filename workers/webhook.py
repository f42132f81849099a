"""Webhook authentication and payload reading: signature over the raw body, exact decimals."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.domain.grammar import loads_exact
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from workers.api_types import PositiveDecimal, Symbol, TradeId, UtcTime, invalid_payload

SIGNATURE_SCHEME = "v1="


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


class TradeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: TradeId
    symbol: Symbol
    side: Literal["buy", "sell"]
    quantity: PositiveDecimal
    price: PositiveDecimal
    executed_at: UtcTime

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
        data = loads_exact(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadError([{"field": "body", "problem": f"is not valid JSON: {exc}"}]) from None
    if isinstance(data, dict) and isinstance(data.get("trades"), list) and len(data["trades"]) > max_trades:
        raise PayloadError([{"field": "trades", "problem": f"at most {max_trades} trades per request"}])
    try:
        payload = TradesIn.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(invalid_payload(exc.errors(include_url=False))["details"]) from None
    return [trade.to_domain() for trade in payload.trades]


def utc_seconds(moment: datetime) -> int:
    return int(moment.timestamp())
