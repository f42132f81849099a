"""Broker-level dust cleanup and account normalization (SPEC 1.4), dry run by default.

Cleanup force-liquidates every position worth less than ``dust.broker_cleanup_usd`` and
retries orphaned exit remainders (``tasks.orphans``); normalization closes every position
worth less than ``dust.normalize_usd`` and consolidates those from there up to
``dust.consolidate_usd`` (``tasks.consolidation``). Both report what they saw and did (or
would do) per position. Both are safe to run twice: a closed position is gone at the broker,
so the next run does not see it, and an order in flight is not planned again.
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
from tasks.consolidation import Consolidator
from tasks.guards import TradingPolicy
from tasks.ports import Brokerage, BrokerageError, BrokerPosition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupLine:
    account: str
    symbol: str
    quantity: Decimal
    value: Decimal
    action: str  # closed | would_close | consolidated | would_consolidate | kept | skipped | failed
    reason: str
    execution_id: str | None = None  # a consolidation's buy
    kind: str = "close"  # close | consolidate

    def as_json(self) -> dict[str, str]:
        return {k: canonical(v) if isinstance(v, Decimal) else v for k, v in asdict(self).items()}


@dataclass
class CleanupSummary:
    job: str
    dry_run: bool
    threshold_usd: Decimal
    positions_seen: int = 0
    lines: list[CleanupLine] = field(default_factory=list)
    orphans: list[dict[str, Any]] = field(default_factory=list)  # cleanup: orphaned remainders retried

    def count(self, action: str) -> int:
        return sum(1 for line in self.lines if line.action == action)

    @property
    def closing(self) -> list[CleanupLine]:
        return [line for line in self.lines if line.kind == "close"]

    @property
    def dust_value(self) -> Decimal:
        return sum((line.value for line in self.closing), Decimal(0))

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "dry_run": self.dry_run,
            "threshold_usd": money_text(self.threshold_usd),
            "positions_seen": self.positions_seen,
            "dust_found": len(self.closing),
            "closed": self.count("closed"),
            "would_close": self.count("would_close"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "consolidated": self.count("consolidated"),
            "would_consolidate": self.count("would_consolidate"),
            "dust_value_usd": money_text(self.dust_value),
            "lines": [line.as_json() for line in self.lines],
            "orphans": self.orphans,
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
    consolidate_usd: Decimal = Decimal(0),
    consolidate: Consolidator | None = None,
) -> CleanupSummary:
    """Close (or, in a dry run, list) every position worth less than the threshold; with a
    ``consolidate``, hand it every position from there up to ``consolidate_usd``."""
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
            if value is None or position.quantity == 0:
                continue
            if value < threshold_usd:
                summary.lines.append(_handle(brokerage, account, position, value, policy, frozen, execute))
            elif consolidate is not None and value < consolidate_usd and position.quantity > 0:
                summary.lines.append(_consolidate(consolidate, account, position, value))
    return summary


def _consolidate(consolidate: Consolidator, account: str, position: BrokerPosition, value: Decimal) -> CleanupLine:
    price = position.current_price if position.current_price is not None else value / position.quantity
    action, reason, execution_id = consolidate(account, position.symbol, position.quantity, price)
    bought = None if execution_id is None else str(execution_id)
    return CleanupLine(account, position.symbol, position.quantity, value, action, reason, bought, "consolidate")


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
