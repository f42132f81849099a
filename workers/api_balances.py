"""Operator endpoint ``GET /balances``: each account's last known balance and its age."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter

from models.domain.quantities import money_text
from tasks.balances import KnownBalance, known_balances
from workers import runtime
from workers.api_common import Operator

router = APIRouter()
UNKNOWN = "unknown"  # never 0: a balance that cannot be vouched for is not reported as empty


@router.get("/balances")
def list_balances(_: Operator) -> dict[str, Any]:
    config = runtime.balance_config()
    balances = known_balances(runtime.unit_of_work(), runtime.settings().accounts, config.max_age, runtime.now())
    return {"max_age_seconds": config.max_age_seconds, "items": [_balance_json(b) for b in balances]}


def _balance_json(balance: KnownBalance) -> dict[str, Any]:
    def value(amount: Decimal | None) -> str:
        return money_text(amount) if balance.known and amount is not None else UNKNOWN

    return {
        "account": balance.account,
        "known": balance.known,
        "cash": value(balance.cash),
        "buying_power": value(balance.buying_power),
        "equity": value(balance.equity),
        "age_seconds": balance.age_seconds,  # of the last values read; null if never fetched
        "last_error": balance.last_error,
    }
