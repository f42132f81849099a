"""Operator endpoints that place orders: notional sells (with the dust cap) and exits."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from models.domain.quantities import canonical, money_text
from models.domain.sales import quote_sale
from tasks.exits import request_exit
from tasks.guards import Refused
from tasks.sales import check_quote, place_notional_sale
from workers import runtime
from workers.api_common import FreeText, Operator, body_schema, exact_body, execution_json
from workers.api_contract import order_responses
from workers.api_types import PositiveDecimal, StrictBoolean, Symbol

# 409: frozen or not enough position; 503: the database, or the brokerage for the price.
router = APIRouter(responses=order_responses())


class SellIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbol: Symbol
    notional: Annotated[PositiveDecimal, Field(description="USD to sell")]
    account: Annotated[str, Field(min_length=1, max_length=64)] = "default"


class ExitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbol: Symbol
    quantity: PositiveDecimal | None = None
    all: StrictBoolean = False
    reason: FreeText
    account: Annotated[str, Field(min_length=1, max_length=64)] = "default"

    @model_validator(mode="after")
    def _one_amount(self) -> ExitIn:
        if (self.quantity is None) == (not self.all):
            raise ValueError('give either "quantity" or "all": true')
        return self


# What each refusal of the use cases (tasks.guards.Refused) answers; any other is 422.
REFUSAL_STATUS = {"symbol_frozen": 409, "insufficient_position": 409}


def _refused(exc: Refused) -> JSONResponse:
    return JSONResponse(exc.payload(), status_code=REFUSAL_STATUS.get(exc.error, 422))


def _quote_json(quote: Any) -> dict[str, Any]:
    return {
        "requested": money_text(quote.requested),
        "price": money_text(quote.price),
        "quantity": canonical(quote.quantity),
        "proceeds": money_text(quote.proceeds),
        "dust": money_text(quote.dust),
        "cap": money_text(quote.cap),
        "within_cap": quote.within_cap,
        "nearest_below": None if quote.nearest_below is None else money_text(quote.nearest_below),
        "nearest_above": None if quote.nearest_above is None else money_text(quote.nearest_above),
    }


async def _price(sale: SellIn) -> Decimal:
    if sale.account not in runtime.settings().accounts:
        raise Refused("unknown_account", f"account {sale.account!r} is not configured")
    return await run_in_threadpool(runtime.brokerage(sale.account).latest_price, sale.symbol)


@router.post("/sells/quote", openapi_extra=body_schema(SellIn))
async def quote(_: Operator, sale: Annotated[SellIn, Depends(exact_body(SellIn))]) -> JSONResponse:
    try:
        price = await _price(sale)
    except Refused as exc:
        return _refused(exc)
    rules = runtime.venue_rules(sale.symbol)
    result = quote_sale(sale.notional, price, rules, runtime.settings().dust.max_dust_per_sale)
    try:
        check_quote(result, rules, sale.symbol)
        problem = None
    except Refused as exc:
        problem = exc.payload()
    return JSONResponse({"symbol": sale.symbol, **_quote_json(result), "refusal": problem})


@router.post("/sells", status_code=202, openapi_extra=body_schema(SellIn))
async def sell(_: Operator, sale: Annotated[SellIn, Depends(exact_body(SellIn))]) -> JSONResponse:
    try:
        price = await _price(sale)
        placed = await run_in_threadpool(
            lambda: place_notional_sale(
                runtime.unit_of_work(),
                runtime.trading_policy(),
                runtime.venue_rules(sale.symbol),
                symbol=sale.symbol,
                notional=sale.notional,
                account=sale.account,
                price=price,
                cap=runtime.settings().dust.max_dust_per_sale,
                now=runtime.now(),
            )
        )
    except Refused as exc:
        return _refused(exc)
    await run_in_threadpool(_submit_after_commit, placed.execution.id)
    return JSONResponse({"execution": execution_json(placed.execution), **_quote_json(placed.quote)}, 202)


@router.post("/exits", status_code=202, openapi_extra=body_schema(ExitIn))
async def exit_position(_: Operator, order: Annotated[ExitIn, Depends(exact_body(ExitIn))]) -> JSONResponse:
    try:
        execution = await run_in_threadpool(
            lambda: request_exit(
                runtime.unit_of_work(),
                runtime.trading_policy(),
                runtime.venue_rules(order.symbol),
                symbol=order.symbol,
                quantity=order.quantity,
                reason=order.reason,
                account=order.account,
                now=runtime.now(),
            )
        )
    except Refused as exc:
        return _refused(exc)
    await run_in_threadpool(_submit_after_commit, execution.id)
    return JSONResponse({"execution": execution_json(execution)}, 202)


def _submit_after_commit(execution_id: uuid.UUID) -> None:
    from workers.celery_app import enqueue  # the Celery app loads on the first order, not at import

    enqueue.submit([execution_id])
