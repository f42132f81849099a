"""What the API's routers share: operator auth, exact JSON bodies, JSON rendering of rows."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from models.domain.grammar import loads_exact
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
# HTTPBearer puts the scheme into the OpenAPI document (the Authorize button of /docs) and reads
# the scheme name case-insensitively, as RFC 7235 says; auto_error=False: the 401 below is ours.
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <DUSTPAN_API_TOKEN>")


def require_operator(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    token = runtime.settings().api_token or ""
    offered = credentials.credentials.strip() if credentials is not None else ""
    # Constant time over the bytes: the comparison must not tell how much of a guess was right.
    if not token or not hmac.compare_digest(offered.encode(), token.encode()):
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


Operator = Annotated[None, Depends(require_operator)]


def exact_body(model: type[M], *, optional: bool = False) -> Callable[[Request], Any]:
    """A request body parsed with JSON numbers as Decimals read from their text, never floats.

    ``optional``: an empty body is the model's defaults.
    """

    async def parse(request: Request) -> M:
        raw = await request.body()
        if optional and not raw.strip():
            raw = b"{}"
        try:
            data = loads_exact(raw)
        except (ValueError, RecursionError) as exc:
            raise RequestValidationError([{"loc": ("body",), "msg": f"is not valid JSON: {exc}"}]) from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None

    return parse


def body_schema(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """OpenAPI for a body read by ``exact_body`` (FastAPI cannot see it in the signature)."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": _inline_refs(model.model_json_schema())}},
        }
    }


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Nested models inlined: pydantic's "#/$defs/..." would point into the OpenAPI document's root."""
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return dict(inline(schema))


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
