"""Celery task ``prices.refresh`` (Beat): thin wrapper around ``refresh_prices``."""

from __future__ import annotations

import logging

from celery import shared_task

from tasks.deps import Dependencies, DustpanTask, recorded
from tasks.prices import refresh_prices, symbols_to_watch

log = logging.getLogger(__name__)


@shared_task(name="prices.refresh", bind=True, base=DustpanTask, ignore_result=True)
def refresh(self: DustpanTask) -> dict[str, int]:
    return refresh_once(self.deps)


@recorded("prices.refresh")
def refresh_once(deps: Dependencies) -> dict[str, int]:
    config = deps.config()
    symbols = symbols_to_watch(deps.unit_of_work(), config.accumulation.restricted_symbols)
    brokerage = deps.brokerage(config.market_data_account)
    outcomes = refresh_prices(deps.unit_of_work(), brokerage, symbols, config.prices, deps.now())
    summary = {outcome.value: count for outcome, count in sorted(outcomes.items())}
    log.info("prices refreshed for %d symbols: %s", len(symbols), summary)
    return summary
