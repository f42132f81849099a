"""Operator endpoints ``GET /positions`` and ``GET /pnl`` (SPEC 1.10, section 3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError

from tasks.position_book import PnlFilter, open_positions, realized_pnl
from workers import runtime
from workers.api_common import Operator
from workers.webhook import SYMBOL_PATTERN

router = APIRouter()
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@router.get("/positions")
def list_positions(_: Operator) -> dict[str, Any]:
    """Open positions per account and symbol, with average cost, last price, value and unrealized P&L."""
    return {"items": open_positions(runtime.unit_of_work())}


@router.get("/pnl")
def list_pnl(
    _: Operator,
    since: Annotated[datetime | None, Query(description="RFC 3339 with an offset")] = None,
    symbol: Annotated[str | None, Query(pattern=SYMBOL_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """Realized P&L entries and their totals by symbol and reason."""
    moment = None if since is None else _in_utc(since)
    return realized_pnl(runtime.unit_of_work(), PnlFilter(since=moment, symbol=symbol, limit=limit))


def _in_utc(since: datetime) -> datetime:
    """Normalized to UTC within 1970..9999 (SPEC 3); PostgreSQL takes no offset beyond 15:59."""
    if since.tzinfo is None:
        # A time without an offset is ambiguous: refuse it rather than guess the zone.
        _refuse("needs an offset, e.g. Z or +00:00")
    try:
        moment = since.astimezone(UTC)
    except OverflowError:
        _refuse("is outside 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z")
    if not EARLIEST <= moment <= LATEST:
        _refuse("is outside 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z")
    return moment


def _refuse(problem: str) -> NoReturn:
    raise RequestValidationError([{"loc": ("query", "since"), "msg": problem}])
