"""Signature and payload reading of POST /webhooks/trades, without a server."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from workers.webhook import PayloadError, read_trades, sign, verify_signature

NOW = 1_700_000_000
TRADE = {
    "id": "t-1",
    "symbol": "AAPL",
    "side": "buy",
    "quantity": "0.5",
    "price": "101.25",
    "executed_at": "2024-05-01T12:00:00Z",
}


def body(*trades: dict[str, object]) -> bytes:
    return json.dumps({"trades": list(trades)}).encode()


def test_signature_from_any_active_secret_is_accepted() -> None:
    raw = body(TRADE)
    header = sign("old", str(NOW), raw) + "," + sign("unrelated", str(NOW), raw)
    assert verify_signature(["new", "old"], str(NOW), header, raw, NOW, 300) is None


@pytest.mark.parametrize(
    ("timestamp", "signature", "payload", "reason"),
    [
        (None, "v1=00", b"{}", "missing"),
        (str(NOW), None, b"{}", "missing"),
        (str(NOW - 301), "sig", b"{}", "more than 300 s"),
        (str(NOW + 301), "sig", b"{}", "more than 300 s"),
        ("12.5", "sig", b"{}", "unix seconds"),
        (str(NOW), "v1=deadbeef", b"{}", "does not match"),
    ],
)
def test_bad_signatures_are_refused(timestamp: str | None, signature: str | None, payload: bytes, reason: str) -> None:
    if signature == "sig":
        signature = sign("secret", str(timestamp), payload)
    assert reason in (verify_signature(["secret"], timestamp, signature, payload, NOW, 300) or "")


def test_one_changed_byte_breaks_the_signature() -> None:
    raw = body(TRADE)
    signature = sign("secret", str(NOW), raw)
    tampered = raw.replace(b"0.5", b"0.6")
    assert verify_signature(["secret"], str(NOW), signature, tampered, NOW, 300) == "signature does not match"


def test_json_numbers_are_read_exactly_not_through_float() -> None:
    raw = (
        b'{"trades": [{"id": "t", "symbol": "AAPL", "side": "sell", "quantity": 0.100000000000000001,'
        b' "price": 3, "executed_at": "2024-05-01T12:00:00+02:00"}]}'
    )
    [trade] = read_trades(raw, 1000)
    assert trade.quantity == Decimal("0.100000000000000001")
    assert trade.price == Decimal(3)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"quantity": "-1"}, "quantity"),
        ({"quantity": "0"}, "quantity"),
        ({"quantity": "NaN"}, "quantity"),
        ({"quantity": "1" * 40}, "quantity"),
        ({"price": "0"}, "price"),
        ({"side": "short"}, "side"),
        ({"symbol": "aapl"}, "symbol"),
        ({"executed_at": "yesterday"}, "executed_at"),
        ({"executed_at": "2024-05-01T12:00:00"}, "executed_at"),  # no time zone
        ({"id": ""}, "id"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_trades_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(PayloadError) as caught:
        read_trades(body(TRADE, {**TRADE, "id": "t-2", **change}), 1000)
    assert f"trades.1.{field}" in [d["field"] for d in caught.value.details], caught.value.details


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"trades": []}',
        b'{"trades": [1]}',
        b"NaN",
        b'{"trades": [{"quantity": NaN}]}',
    ],
)
def test_malformed_bodies_are_payload_errors(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        read_trades(raw, 1000)


def test_more_than_the_maximum_trades_is_refused() -> None:
    with pytest.raises(PayloadError, match="invalid payload") as caught:
        read_trades(body(*[{**TRADE, "id": f"t{i}"} for i in range(1001)]), 1000)
    assert "at most 1000" in caught.value.details[0]["problem"]
