"""What the API's routers share: operator auth, exact JSON bodies, JSON rendering of rows."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from models.domain.quantities import canonical
from models.tables import Execution
from workers import runtime

M = TypeVar("M", bound=BaseModel)


def _storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogate halves cannot be encoded at all.
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        raise ValueError("must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


FreeText = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_storable_text)]
TRADE_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"  # the webhook's rule for trade ids


def require_operator(request: Request) -> None:
    token = runtime.settings().api_token or ""
    header = request.headers.get("authorization", "")
    offered = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    # Constant time over the bytes: the comparison must not tell how much of a guess was right.
    if not token or not hmac.compare_digest(offered.encode(), token.encode()):
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


Operator = Annotated[None, Depends(require_operator)]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def exact_body(model: type[M]) -> Callable[[Request], Any]:
    """A request body parsed with JSON numbers as Decimals read from their text, never floats."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        try:
            data = json.loads(raw, parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            raise RequestValidationError([{"loc": ("body",), "msg": f"body is not valid JSON: {exc}"}]) from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None

    return parse


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body read by ``exact_body`` (FastAPI cannot see it in the signature)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return canonical(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


EXECUTION_FIELDS = (
    "id",
    "symbol",
    "side",
    "quantity",
    "status",
    "client_order_id",
    "broker_order_id",
    "filled_quantity",
    "average_price",
    "source",
    "account",
    "created_at",
    "updated_at",
)


def execution_json(row: Execution, trade_ids: list[str] | None = None) -> dict[str, Any]:
    item = {field: json_value(getattr(row, field)) for field in EXECUTION_FIELDS}
    return {**item, "trade_ids": trade_ids or [], "cursor": str(row.seq)}
