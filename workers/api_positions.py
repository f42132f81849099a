"""Operator endpoints ``GET /positions`` and ``GET /pnl`` (SPEC 1.10, section 3)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError

from tasks.position_book import PnlFilter, open_positions, realized_pnl
from workers import runtime
from workers.api_common import Operator
from workers.webhook import SYMBOL_PATTERN

router = APIRouter()


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
    if since is not None and since.tzinfo is None:
        # A time without an offset is ambiguous: refuse it rather than guess the zone.
        raise RequestValidationError([{"loc": ("query", "since"), "msg": "needs an offset, e.g. Z or +00:00"}])
    return realized_pnl(runtime.unit_of_work(), PnlFilter(since=since, symbol=symbol, limit=limit))
