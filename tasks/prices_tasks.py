"""Celery task ``prices.refresh`` (Beat): thin wrapper around ``refresh_prices``."""

from __future__ import annotations

import logging

from tasks.job_runs import recorded
from tasks.prices import PriceConfig, refresh_prices, symbols_to_watch
from workers import runtime
from workers.celery_app import app

log = logging.getLogger(__name__)


@app.task(name="prices.refresh", ignore_result=True)
@recorded("prices.refresh")
def refresh() -> dict[str, int]:
    config = runtime.settings()
    symbols = symbols_to_watch(runtime.unit_of_work(), frozenset(config.accumulation.restricted_symbols))
    # Prices are market data, the same for every account: the first configured account asks.
    brokerage = runtime.brokerage(next(iter(config.accounts)))
    section = PriceConfig(config.prices.freeze_after_failures, config.prices.cooldown_seconds)
    outcomes = refresh_prices(runtime.unit_of_work(), brokerage, symbols, section, runtime.now())
    summary = {outcome.value: count for outcome, count in sorted(outcomes.items())}
    log.info("prices refreshed for %d symbols: %s", len(symbols), summary)
    return summary
