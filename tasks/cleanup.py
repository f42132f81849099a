"""Broker-level dust cleanup and account normalization (SPEC 1.4), dry run by default.

Cleanup force-liquidates every position worth less than ``dust.broker_cleanup_usd``;
normalization closes every position worth less than ``dust.normalize_usd`` that cleanup
leaves behind. Both report what they saw and did (or would do). Both are safe to run
twice: a closed position is gone at the broker, so the next run does not see it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.quantities import canonical, money_text
from models.domain.symbols import is_restricted
from models.tables import SymbolFreeze
from tasks.guards import TradingPolicy
from tasks.ports import Brokerage, BrokerageError, BrokerPosition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupLine:
    account: str
    symbol: str
    quantity: Decimal
    value: Decimal
    action: str  # closed | would_close | skipped | failed
    reason: str

    def as_json(self) -> dict[str, str]:
        return {k: canonical(v) if isinstance(v, Decimal) else v for k, v in asdict(self).items()}


@dataclass
class CleanupSummary:
    job: str
    dry_run: bool
    threshold_usd: Decimal
    positions_seen: int = 0
    lines: list[CleanupLine] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for line in self.lines if line.action == action)

    @property
    def dust_value(self) -> Decimal:
        return sum((line.value for line in self.lines), Decimal(0))

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "dry_run": self.dry_run,
            "threshold_usd": money_text(self.threshold_usd),
            "positions_seen": self.positions_seen,
            "dust_found": len(self.lines),
            "closed": self.count("closed"),
            "would_close": self.count("would_close"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "dust_value_usd": money_text(self.dust_value),
            "lines": [line.as_json() for line in self.lines],
        }


def position_value(position: BrokerPosition) -> Decimal | None:
    if position.market_value is not None:
        return abs(position.market_value)
    if position.current_price is not None:
        return abs(position.quantity) * position.current_price
    return None


def close_small_positions(
    uow: UnitOfWork,
    brokerages: Callable[[str], Brokerage],
    accounts: Iterable[str],
    policy: TradingPolicy,
    *,
    job: str,
    threshold_usd: Decimal,
    execute: bool,
) -> CleanupSummary:
    """Close (or, in a dry run, list) every position worth less than the threshold."""
    summary = CleanupSummary(job=job, dry_run=not execute, threshold_usd=threshold_usd)
    with uow:
        frozen = set(uow.session.scalars(select(SymbolFreeze.symbol)))
    for account in accounts:
        brokerage = brokerages(account)
        try:
            positions = brokerage.list_positions()
        except BrokerageError as exc:
            summary.lines.append(CleanupLine(account, "*", Decimal(0), Decimal(0), "failed", f"positions: {exc}"))
            continue
        summary.positions_seen += len(positions)
        for position in positions:
            value = position_value(position)
            if value is None or position.quantity == 0 or value >= threshold_usd:
                continue
            summary.lines.append(_handle(brokerage, account, position, value, policy, frozen, execute))
    return summary


def _handle(
    brokerage: Brokerage,
    account: str,
    position: BrokerPosition,
    value: Decimal,
    policy: TradingPolicy,
    frozen: set[str],
    execute: bool,
) -> CleanupLine:
    def line(action: str, reason: str) -> CleanupLine:
        return CleanupLine(account, position.symbol, position.quantity, value, action, reason)

    if is_restricted(position.symbol, policy.restricted_symbols):
        return line("skipped", "restricted symbol: never traded")
    if position.symbol in frozen:
        return line("skipped", "symbol is frozen")
    if not execute:
        return line("would_close", f"worth {money_text(value)} USD: dry run")
    try:
        order = brokerage.close_position(position.symbol)
    except BrokerageError as exc:
        return line("failed", f"{type(exc).__name__}: {exc}")
    return line("closed", f"worth {money_text(value)} USD: order {order.id} ({order.status})")
