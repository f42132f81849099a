"""Dust scan and aggregation (SPEC 1.3): one cycle of the Beat job ``dust.scan``.

A cycle, in one transaction:
1. sell every aggregate that an earlier cycle made ready (a new ``dust_sale`` execution, the
   aggregate ``selling`` with its ``execution_id``; ``execution.submit`` is enqueued after
   commit by the caller), unless the symbol is restricted, frozen or untradable, or the venue
   would refuse the quantity at the current price;
2. move the dust of every open holding lot into the one live aggregate of its account+symbol
   (created when there is none), originals ``dust_aggregated`` with ``aggregate_id``;
3. re-evaluate every live aggregate: ``dust_pending`` below the minimums, ``dust_ready`` once
   it reaches them (with a hysteresis band on the notional minimum).

Two scans never interleave (``lock_lot_books``) and every row changed is locked, so a second
scan finds the work done; a scan killed halfway rolls back as a whole. Running a cycle again
adds nothing: aggregated lots are no longer open and a selling aggregate is not sold twice.

Prices: the price job's last good price (``price_health``, breaker closed, younger than
``price_max_age``), read for every symbol in one query; only for a symbol without one is the
brokerage asked, before the transaction starts. Only symbols with a notional minimum need one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.dust import AggregateStatus, DustSplit, aggregate_readiness, sale_refusal, split_dust
from models.domain.quantities import canonical
from models.domain.symbols import is_restricted
from models.domain.venue import VenueRules
from tasks import dust_store as store
from tasks.exits import new_sell
from tasks.guards import TradingPolicy
from tasks.lots import lock_lot_books
from tasks.ports import BrokerageError
from tasks.venues import VenueConfig, symbols_with_rules, venue_rules_for

PriceSource = Callable[[str], Decimal]


@dataclass(frozen=True)
class DustScanConfig:
    policy: TradingPolicy  # restricted symbols are never traded; sales only for configured accounts
    venues: VenueConfig = field(default_factory=VenueConfig)
    hysteresis: Decimal = Decimal("0.05")
    price_max_age: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class PlannedSale:
    aggregate_id: int
    account: str
    symbol: str
    quantity: Decimal
    execution_id: uuid.UUID | None  # None in a dry run

    def as_json(self) -> dict[str, Any]:
        return {
            "aggregate_id": self.aggregate_id,
            "account": self.account,
            "symbol": self.symbol,
            "quantity": canonical(self.quantity),
            "execution_id": str(self.execution_id) if self.execution_id else None,
        }


@dataclass
class ScanReport:
    dry_run: bool
    lots_seen: int = 0
    dust_found: int = 0  # open lots with dust in them (blocked symbols included)
    aggregated: int = 0  # lots (or their dust parts) moved into an aggregate
    aggregates_created: int = 0
    pending: int = 0
    ready: int = 0
    selling: int = 0
    sales: list[PlannedSale] = field(default_factory=list)  # created, or in a dry run: would be
    skipped: dict[str, set[str]] = field(default_factory=dict)  # reason -> symbols
    unpriced: set[str] = field(default_factory=set)  # a notional minimum and no price

    @property
    def execution_ids(self) -> list[uuid.UUID]:
        return [sale.execution_id for sale in self.sales if sale.execution_id is not None]

    def skip(self, reason: str, symbol: str) -> None:
        self.skipped.setdefault(reason, set()).add(symbol)

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "lots_seen": self.lots_seen,
            "dust_found": self.dust_found,
            "aggregated": self.aggregated,
            "aggregates_created": self.aggregates_created,
            "aggregates_pending": self.pending,
            "aggregates_ready": self.ready,
            "aggregates_selling": self.selling,
            "sales": [sale.as_json() for sale in self.sales],
            "skipped": {reason: sorted(symbols) for reason, symbols in sorted(self.skipped.items())},
            "unpriced": sorted(self.unpriced),
        }


@dataclass
class _Market:
    rules: dict[str, VenueRules]
    prices: dict[str, Decimal]
    frozen: frozenset[str] = frozenset()
    # Never synced and not overridden: the default (whole shares) could call 0.5 BTC dust.
    unknown: set[str] = field(default_factory=set)

    def price(self, symbol: str) -> Decimal | None:
        return self.prices.get(symbol)

    def blocked(self, symbol: str, policy: TradingPolicy) -> str | None:
        """Why no dust action at all is taken for the symbol (SPEC 1.6), or None."""
        if is_restricted(symbol, policy.restricted_symbols):
            return "restricted"
        if symbol in self.frozen:
            return "frozen"
        if symbol in self.unknown:
            return "venue rules not synced yet"
        if not self.rules[symbol].tradable:
            return "not tradable at the venue"
        return None


def scan_dust(
    uow: UnitOfWork, prices: PriceSource, config: DustScanConfig, now: datetime, *, execute: bool
) -> ScanReport:
    """One cycle; ``execute=False`` runs it all and rolls back, reporting what it would do."""
    report = ScanReport(dry_run=not execute)
    market = _market(uow, prices, config, now, report)
    with uow:
        session = uow.session
        lock_lot_books(session)
        market.frozen = store.frozen_symbols(session)
        aggregates = store.lock_live_aggregates(session)
        holdings = store.open_holdings(session)
        _add_missing_rules(session, market, {h.symbol for h in holdings} | {a.symbol for a in aggregates}, config)
        report.lots_seen = len(holdings)
        _sell_ready(session, aggregates, market, config, report, now, execute)
        aggregates += _aggregate_dust(session, holdings, aggregates, market, config, report, now)
        _refresh_readiness(aggregates, market, config)
        store.write_aggregates(session, aggregates, now)
        _count(aggregates, report)
        if execute:
            uow.commit()
    return report


def _market(uow: UnitOfWork, prices: PriceSource, config: DustScanConfig, now: datetime, report: ScanReport) -> _Market:
    """Rules and prices, gathered before the locking transaction: broker calls never hold a lock."""
    with uow:
        session = uow.session
        symbols = store.scanned_symbols(session)
        rules = venue_rules_for(session, symbols, config.venues)
        market = _Market(rules, store.recorded_prices(session, symbols, now - config.price_max_age))
        market.frozen = store.frozen_symbols(session)
        market.unknown = set(symbols) - symbols_with_rules(session, symbols, config.venues)
    # Only a notional minimum needs a price; the others keep whatever the price job recorded.
    needed = {s for s in symbols if rules[s].min_notional > 0 and market.blocked(s, config.policy) is None}
    for symbol in sorted(needed - set(market.prices)):
        try:
            market.prices[symbol] = prices(symbol)
        except BrokerageError:
            report.unpriced.add(symbol)  # the notional minimum waits for a price
    return market


def _add_missing_rules(session: Session, market: _Market, symbols: set[str], config: DustScanConfig) -> None:
    """A symbol that appeared since the rules were read (a lot synced meanwhile); no price for it yet."""
    missing = symbols - set(market.rules)
    if missing:
        market.rules.update(venue_rules_for(session, missing, config.venues))
        market.unknown |= missing - symbols_with_rules(session, missing, config.venues)


def _sell_ready(
    session: Session,
    aggregates: list[store.Aggregate],
    market: _Market,
    config: DustScanConfig,
    report: ScanReport,
    now: datetime,
    execute: bool,
) -> None:
    for aggregate in aggregates:
        if aggregate.status != AggregateStatus.READY:
            continue
        symbol, price = aggregate.symbol, market.price(aggregate.symbol)
        blocked = market.blocked(symbol, config.policy)
        if blocked is None and aggregate.account not in config.policy.accounts:
            blocked = "account not configured"
        if blocked is not None:
            report.skip(blocked, symbol)
            continue
        rules = market.rules[symbol]
        readiness = aggregate_readiness(aggregate.quantity, rules, price, AggregateStatus.READY, config.hysteresis)
        if readiness.status is not AggregateStatus.READY:
            continue  # fell out of the band: _refresh_readiness turns it back to pending
        refusal = sale_refusal(readiness.sell_quantity, rules, price)
        if refusal is not None:
            report.skip(f"waiting: {refusal}", symbol)
            continue
        execution_id = None
        if execute:
            quantity, reason = readiness.sell_quantity, f"dust aggregate #{aggregate.id}"
            execution_id = new_sell(session, aggregate.account, symbol, quantity, "dust_sale", now, reason=reason).id
        aggregate.status, aggregate.execution_id, aggregate.changed = "selling", execution_id, True
        aggregate.price = price if price is not None else aggregate.price
        aggregate.note = f"Selling {readiness.sell_quantity}"
        report.sales.append(PlannedSale(aggregate.id, aggregate.account, symbol, readiness.sell_quantity, execution_id))


def _aggregate_dust(
    session: Session,
    holdings: list[store.Holding],
    aggregates: list[store.Aggregate],
    market: _Market,
    config: DustScanConfig,
    report: ScanReport,
    now: datetime,
) -> list[store.Aggregate]:
    """Move dust into aggregates; returns the aggregates created."""
    live = {(a.account, a.symbol): a for a in aggregates}
    chosen: dict[int, tuple[store.Holding, DustSplit]] = {}
    for lot in holdings:
        split = split_dust(lot.quantity, market.rules[lot.symbol], market.price(lot.symbol))
        if split.dust == 0:
            continue
        report.dust_found += 1
        blocked = market.blocked(lot.symbol, config.policy)
        aggregate = live.get((lot.account, lot.symbol))
        if blocked is None and aggregate is not None and aggregate.status == "selling":
            blocked = "sale in flight (new dust waits for it to settle)"
        if blocked is not None:
            report.skip(blocked, lot.symbol)
            continue
        chosen[lot.id] = (lot, split)
    locked = store.lock_open_holdings(session, sorted(chosen))
    groups = sorted({(chosen[i][0].account, chosen[i][0].symbol) for i in locked} - set(live))
    created = store.create_aggregates(session, groups, now)
    live.update({(a.account, a.symbol): a for a in created})
    moves = []
    for lot_id, quantity in locked.items():
        lot, split = chosen[lot_id]
        price = market.price(lot.symbol)
        if quantity != lot.quantity:  # changed before the lock: decide again on what is there now
            split = split_dust(quantity, market.rules[lot.symbol], price)
        if split.dust == 0:
            continue
        aggregate = live[(lot.account, lot.symbol)]
        aggregate.quantity += split.dust
        aggregate.changed = True
        moves.append(store.Move(lot_id, lot.account, lot.symbol, split.keep, split.dust, aggregate.id, price))
    store.move_into_aggregates(session, moves, now)
    report.aggregated += len(moves)
    report.aggregates_created += len(created)
    return created


def _refresh_readiness(aggregates: list[store.Aggregate], market: _Market, config: DustScanConfig) -> None:
    """Pending or ready by the rules; a ready one made here is sold by the next cycle."""
    for aggregate in aggregates:
        if aggregate.status == "selling" or market.blocked(aggregate.symbol, config.policy) is not None:
            continue
        price, rules = market.price(aggregate.symbol), market.rules[aggregate.symbol]
        readiness = aggregate_readiness(
            aggregate.quantity, rules, price, AggregateStatus(aggregate.status), config.hysteresis
        )
        price = price if price is not None else aggregate.price
        if (readiness.status.value, readiness.note, price) != (aggregate.status, aggregate.note, aggregate.price):
            aggregate.status, aggregate.note, aggregate.price = readiness.status.value, readiness.note, price
            aggregate.changed = True


def _count(aggregates: list[store.Aggregate], report: ScanReport) -> None:
    report.pending = sum(1 for a in aggregates if a.status == AggregateStatus.PENDING)
    report.ready = sum(1 for a in aggregates if a.status == AggregateStatus.READY)
    report.selling = sum(1 for a in aggregates if a.status == "selling")
