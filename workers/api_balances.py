"""Operator endpoint ``GET /balances``: each account's last known balance and its age."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tasks.balances import known_balances
from workers import runtime
from workers.api_common import Operator
from workers.api_contract import responses

router = APIRouter(responses=responses(401, 408, 503))


@router.get("/balances")
def list_balances(_: Operator) -> dict[str, Any]:
    config = runtime.balance_config()
    balances = known_balances(runtime.unit_of_work(), runtime.settings().accounts, config.max_age, runtime.now())
    return {"max_age_seconds": config.max_age_seconds, "items": [b.as_json() for b in balances]}
