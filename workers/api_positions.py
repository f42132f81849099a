"""Operator endpoints ``GET /positions`` and ``GET /pnl`` (SPEC 1.10, section 3)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BeforeValidator, Field

from models.domain import grammar
from models.domain.grammar import SYMBOL_PATTERN
from tasks.position_book import PnlFilter, open_positions, realized_pnl
from workers import api_types, runtime
from workers.api_common import Operator
from workers.api_contract import responses

router = APIRouter(responses=responses(401, 408, 422, 503))
# Whole numbers in a query, ASCII digits only (the grammar of workers.api_types), up to 10,000 entries.
PnlLimit = Annotated[int, BeforeValidator(grammar.parse_count), Field(ge=1, le=10000)]


@router.get("/positions")
def list_positions(_: Operator) -> dict[str, Any]:
    """Open positions per account and symbol, with average cost, last price, value and unrealized P&L."""
    return {"items": open_positions(runtime.unit_of_work())}


@router.get("/pnl")
def list_pnl(
    _: Operator,
    since: Annotated[api_types.UtcTime | None, Query(description="RFC 3339 with an offset, normalized to UTC")] = None,
    symbol: Annotated[str | None, Query(pattern=SYMBOL_PATTERN)] = None,
    limit: Annotated[PnlLimit, Query()] = 1000,
) -> dict[str, Any]:
    """Realized P&L entries and their totals by symbol and reason."""
    moment: datetime | None = since
    return realized_pnl(runtime.unit_of_work(), PnlFilter(since=moment, symbol=symbol, limit=limit))
