"""The input grammar of SPEC section 3, in one place: decimals, booleans, times, trade ids, symbols.

Pure parsing, no I/O: the webhook, every operator endpoint and the CLI read their values with
these functions (the API through the pydantic types in ``workers/api_types.py``). Each parser
returns the exact value or raises ``GrammarError`` with a problem a client can act on; the
caller adds the field's name.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from models.domain.quantities import MAX_INTEGER_DIGITS, SCALE, canonical

DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]{1,18})?$"
TRADE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
SYMBOL_PATTERN = r"^[A-Z0-9./-]{1,16}$"
TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
RANGE_TEXT = "1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z"

# Python's ``$`` also matches before a final newline, so every check below is a fullmatch of
# the pattern without its anchors; [0-9] (not \d) keeps Arabic-Indic and fullwidth digits out.
_DECIMAL = re.compile(DECIMAL_PATTERN[1:-1])
_TRADE_ID = re.compile(TRADE_ID_PATTERN[1:-1])
_SYMBOL = re.compile(SYMBOL_PATTERN[1:-1])
_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]{1,9}))?(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


class GrammarError(ValueError):
    """A value outside the grammar; the message says what is wrong, not which field."""


class JsonNumber(Decimal):
    """A JSON number, kept with the text it was written in: the grammar is about that text."""

    text: str

    def __new__(cls, text: str) -> JsonNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def loads_exact(raw: bytes | str) -> Any:
    """JSON with every number as a ``JsonNumber`` read from its text, never through float."""
    return json.loads(raw, parse_float=JsonNumber, parse_int=JsonNumber, parse_constant=_no_constants)


def _decimal_text(value: object) -> str:
    if isinstance(value, JsonNumber):
        return value.text
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")  # a Decimal from Python code, not from a client's text
    raise GrammarError("must be a decimal, as a JSON string or number")


def parse_decimal(value: object, *, positive: bool = False) -> Decimal:
    """``^[0-9]+(\\.[0-9]{1,18})?$``: no sign, exponent, spaces, underscores or non-ASCII digits."""
    text = _decimal_text(value)
    if not _DECIMAL.fullmatch(text):
        if re.fullmatch(r"[0-9]+\.[0-9]{19,}", text):
            raise GrammarError(f"has more than {SCALE} decimal places")
        raise GrammarError(
            "must be written as ASCII digits with an optional '.' and 1 to 18 decimals"
            " (no sign, exponent, spaces or underscores)"
        )
    if len(text.split(".")[0].lstrip("0")) > MAX_INTEGER_DIGITS:
        raise GrammarError(f"has more than {MAX_INTEGER_DIGITS} integer digits")
    number = Decimal(text)
    if positive and number == 0:
        raise GrammarError("must be greater than 0")
    return number


def parse_bool(value: object) -> bool:
    if value is True or value is False:
        return value
    raise GrammarError("must be JSON true or false")


def parse_time(value: object) -> datetime:
    """RFC 3339 with an offset, normalized to UTC, inside ``RANGE_TEXT``."""
    if not isinstance(value, str):
        raise GrammarError("must be an RFC 3339 time string")
    match = _TIME.fullmatch(value)
    if match is None:
        raise GrammarError("must be an RFC 3339 time with an offset, e.g. 2026-11-02T14:30:00Z")
    fraction = match["fraction"] or ""
    if len(fraction) > 6:
        raise GrammarError("has more than 6 fractional second digits (microseconds are the finest kept)")
    if match["s"] == "60":
        raise GrammarError("leap seconds are not accepted")
    moment = _local_time(match, fraction)
    # Normalizing first: an offset can push a time that reads in range out of Python's or
    # PostgreSQL's years (0001-01-01T00:00:00+01:00), and PostgreSQL only stores UTC anyway.
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise GrammarError(f"is outside {RANGE_TEXT} in UTC") from None
    if not EARLIEST <= utc <= LATEST:
        raise GrammarError(f"is outside {RANGE_TEXT} in UTC")
    return utc


def _local_time(match: re.Match[str], fraction: str) -> datetime:
    offset = match["offset"]
    if offset in ("Z", "z"):
        zone = UTC
    else:
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise GrammarError("has an offset outside -23:59 .. +23:59")
        delta = timedelta(hours=hours, minutes=minutes)
        zone = timezone(-delta if offset[0] == "-" else delta)
    year, month, day = (int(part) for part in match["date"].split("-"))
    if year == 0:
        raise GrammarError(f"is outside {RANGE_TEXT} in UTC")
    try:
        return datetime(
            year,
            month,
            day,
            int(match["h"]),
            int(match["m"]),
            int(match["s"]),
            int(fraction.ljust(6, "0")),
            tzinfo=zone,
        )
    except ValueError:
        raise GrammarError("is not a valid calendar date and time") from None


def parse_count(value: object) -> int:
    """A whole number in a query (limits, cursors): ASCII digits only, no sign, spaces or underscores."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,19}", value):
        raise GrammarError("must be a whole number written in ASCII digits")
    return int(value)


def parse_trade_id(value: object) -> str:
    if not isinstance(value, str) or not _TRADE_ID.fullmatch(value):
        raise GrammarError("must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'")
    return value


def parse_symbol(value: object) -> str:
    if not isinstance(value, str) or not _SYMBOL.fullmatch(value):
        raise GrammarError("must be 1 to 16 characters of A-Z, 0-9, '.', '/' or '-' (upper case, e.g. BTC/USD)")
    return value


def plain(number: Decimal) -> str:
    """Output notation: never an exponent ("0", not "0E-18")."""
    return canonical(number)
