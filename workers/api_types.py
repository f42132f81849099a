"""The grammar of ``models/domain/grammar.py`` as pydantic types, and the one 422 shape.

Every field of the webhook and the operator bodies that carries a decimal, boolean, time,
trade id or symbol uses these types, so that the API, its OpenAPI document and the CLI read
one grammar. The JSON schemas are written out (``WithJsonSchema``) because the validators
run before pydantic's own types, which would otherwise advertise a laxer grammar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

from models.domain import grammar
from models.domain.quantities import MAX_INTEGER_DIGITS


def _positive_decimal_pattern() -> str:
    """DECIMAL_PATTERN without zero: a non-zero integer part, or a fraction with a non-zero digit."""
    fractions = "|".join(f"0{{{k}}}[1-9][0-9]{{0,{17 - k}}}" for k in range(18))
    whole = f"0*[1-9][0-9]{{0,{MAX_INTEGER_DIGITS - 1}}}(\\.[0-9]{{1,18}})?"
    return f"^({whole}|0+\\.({fractions}))$"


POSITIVE_DECIMAL_PATTERN = _positive_decimal_pattern()


def _decimal_schema(pattern: str, minimum: dict[str, int]) -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "string", "pattern": pattern, "maxLength": 64},
            {"type": "number", **minimum, "description": "read exactly from its text; same grammar as the string"},
        ],
        "description": "exact decimal, plain notation, at most 18 decimals",
    }


def _decimal(positive: bool) -> Callable[[Any], Decimal]:
    return lambda value: grammar.parse_decimal(value, positive=positive)


DecimalText = Annotated[
    Decimal,
    BeforeValidator(_decimal(False)),
    WithJsonSchema(_decimal_schema(grammar.DECIMAL_PATTERN, {"minimum": 0})),
]
PositiveDecimal = Annotated[
    Decimal,
    BeforeValidator(_decimal(True)),
    WithJsonSchema(_decimal_schema(POSITIVE_DECIMAL_PATTERN, {"exclusiveMinimum": 0})),
]
StrictBoolean = Annotated[bool, BeforeValidator(grammar.parse_bool), WithJsonSchema({"type": "boolean"})]
UtcTime = Annotated[
    datetime,
    BeforeValidator(grammar.parse_time),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": grammar.TIME_PATTERN}),
]
TradeId = Annotated[
    str,
    BeforeValidator(grammar.parse_trade_id),
    WithJsonSchema({"type": "string", "pattern": grammar.TRADE_ID_PATTERN, "minLength": 1, "maxLength": 128}),
]
Symbol = Annotated[
    str,
    BeforeValidator(grammar.parse_symbol),
    WithJsonSchema({"type": "string", "pattern": grammar.SYMBOL_PATTERN, "minLength": 1, "maxLength": 16}),
]


def _count_schema(minimum: int, maximum: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": minimum, "maximum": maximum})


# Whole numbers in a query, ASCII digits only (pydantic alone reads "1_0" and " 10" as 10).
Limit = Annotated[int, BeforeValidator(grammar.parse_count), Field(ge=1, le=1000), _count_schema(1, 1000)]
Cursor = Annotated[int, BeforeValidator(grammar.parse_count), Field(ge=0, le=2**62), _count_schema(0, 2**62)]

_WHERE = ("body", "query", "path", "header", "cookie")


def field_name(loc: Sequence[Any]) -> str:
    """``("body", "trades", 0, "quantity")`` -> ``"trades.0.quantity"``; the whole body is ``"body"``."""
    parts = [str(part) for part in loc]
    if len(parts) > 1 and parts[0] in _WHERE:
        parts = parts[1:]
    return ".".join(parts) or "body"


def problem_text(error: dict[str, Any]) -> str:
    """The grammar's own sentence for our validators, pydantic's message for the rest."""
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        return str(cause)
    return str(error.get("msg", "is invalid"))


def invalid_payload(errors: Sequence[Any]) -> dict[str, Any]:
    details = [{"field": field_name(e.get("loc", ())), "problem": problem_text(e)} for e in errors]
    return {"error": "invalid_payload", "details": details}
