"""Venue rules: synced from the brokerage's asset data, config overrides on top (SPEC 4).

``venue_rules_for`` is the one answer to "what are the rules of a symbol"; the API, the
dust scan and ``workers.runtime.venue_rules`` all read through it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, union
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.venue import VenueRules
from models.domain.venue_sources import RuleOverride, apply_override, rules_from_asset
from models.tables import Accumulator, Position
from models.tables_ops import Lot, VenueRuleRow
from tasks.ports import Asset, Brokerage, BrokerageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VenueConfig:
    whole_shares: bool = True  # the rules of a symbol never synced: the hedge venue's whole shares
    overrides: Mapping[str, RuleOverride] = field(default_factory=dict)


def venue_rules_for(session: Session, symbols: Iterable[str], config: VenueConfig) -> dict[str, VenueRules]:
    """The synced row of each symbol (the config default if never synced), overrides on top."""
    wanted = sorted(set(symbols))
    rows = {}
    if wanted:
        rows = {row.symbol: row for row in session.scalars(select(VenueRuleRow).where(VenueRuleRow.symbol.in_(wanted)))}
    default = VenueRules(whole_shares=config.whole_shares)
    return {
        symbol: apply_override(_rules_of(rows[symbol]) if symbol in rows else default, config.overrides.get(symbol))
        for symbol in wanted
    }


def symbols_with_rules(session: Session, symbols: Iterable[str], config: VenueConfig) -> set[str]:
    """Symbols whose rules come from the venue or the config file, not from the bare default."""
    wanted = sorted(set(symbols))
    if not wanted:
        return set()
    synced = set(session.scalars(select(VenueRuleRow.symbol).where(VenueRuleRow.symbol.in_(wanted))))
    return synced | (set(wanted) & set(config.overrides))


def _rules_of(row: VenueRuleRow) -> VenueRules:
    return VenueRules(
        whole_shares=row.whole_shares,
        step=row.step,
        min_quantity=row.min_quantity,
        min_notional=row.min_notional,
        tradable=row.tradable,
    )


@dataclass
class VenueSyncReport:
    synced: list[str] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)  # written with source 'override'
    unknown: list[str] = field(default_factory=list)  # the broker has no asset of that name
    failed: dict[str, str] = field(default_factory=dict)  # kept their previous row

    def as_json(self) -> dict[str, Any]:
        return {"synced": self.synced, "overridden": self.overridden, "unknown": self.unknown, "failed": self.failed}


def symbols_that_matter(session: Session, config: VenueConfig) -> list[str]:
    """Every symbol dustpan holds, nets or has lots of, and every overridden one."""
    query = union(select(Accumulator.symbol), select(Position.symbol), select(Lot.symbol).distinct())
    return sorted(set(session.scalars(query)) | set(config.overrides))


def sync_venue_rules(uow: UnitOfWork, brokerage: Brokerage, config: VenueConfig, now: datetime) -> VenueSyncReport:
    """Fetch asset data outside any transaction, then upsert every row in one; safe to rerun."""
    with uow:
        symbols = symbols_that_matter(uow.session, config)
    report = VenueSyncReport()
    assets: dict[str, Asset | None] = {}
    for symbol in symbols:
        try:
            assets[symbol] = brokerage.get_asset(symbol)
        except BrokerageError as exc:  # one symbol's trouble keeps its old row, not the others'
            report.failed[symbol] = f"{type(exc).__name__}: {exc}"
            log.warning("venue rules of %s not synced: %s", symbol, exc)
    with uow:
        for symbol, asset in assets.items():
            override = config.overrides.get(symbol)
            if asset is None:
                report.unknown.append(symbol)
                if override is None:
                    continue
                base = VenueRules(whole_shares=config.whole_shares)
            else:
                base = rules_from_asset(
                    tradable=asset.tradable,
                    fractionable=asset.fractionable,
                    min_order_size=asset.min_order_size,
                    min_trade_increment=asset.min_trade_increment,
                )
            _upsert(uow.session, symbol, apply_override(base, override), asset, override is not None, now)
            (report.overridden if override is not None else report.synced).append(symbol)
        uow.commit()
    return report


def _upsert(
    session: Session, symbol: str, rules: VenueRules, asset: Asset | None, overridden: bool, now: datetime
) -> None:
    values = {
        "tradable": rules.tradable,
        "whole_shares": rules.whole_shares,
        "step": rules.step,
        "min_quantity": rules.min_quantity,
        "min_notional": rules.min_notional,
        "price_increment": asset.price_increment if asset is not None else None,
        "source": "override" if overridden else "broker",
        "synced_at": now,
    }
    session.execute(
        insert(VenueRuleRow)
        .values(symbol=symbol, **values)
        .on_conflict_do_update(index_elements=["symbol"], set_=values)
    )


def rules_for_symbol(uow: UnitOfWork, symbol: str, config: VenueConfig) -> VenueRules:
    """The symbol's rules: the row ``venues.sync`` wrote from the broker's asset data (the
    configured default when never synced), config overrides on top."""
    with uow:
        return venue_rules_for(uow.session, [symbol], config)[symbol]
