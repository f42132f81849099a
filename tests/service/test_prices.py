"""Price feed failures freeze a symbol, a cooldown and one probe thaw it (SPEC 1.6), on real PostgreSQL.

The clock is the ``now`` argument; the far side is the fake brokerage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.domain.venue import VenueRules
from models.tables import Accumulator, Execution, Position, SymbolFreeze
from models.tables_ops import Lot, PriceHealth
from tasks.execution import ExecutionConfig, SubmitOutcome, submit_execution
from tasks.exits import request_exit
from tasks.guards import Refused, TradingPolicy
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.prices import PriceConfig, PriceOutcome, claim_fetch, refresh_price, symbols_to_watch
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
CONFIG = PriceConfig(freeze_after_failures=3, cooldown_seconds=300, probe_lease_seconds=60)
ACCUMULATION = AccumulationConfig(D(1), 1000, frozenset())
EXECUTION = ExecutionConfig(D(1), 30, 3)
AFTER_COOLDOWN = NOW + timedelta(seconds=300)


class PriceFeed(FakeBrokerage):
    """The fake far side, counting price requests; ``delay`` keeps a probe in flight a while."""

    def __init__(self) -> None:
        super().__init__(price=D("187.25"))
        self.price_calls = 0
        self.delay = 0.0  # float-ok: seconds

    def latest_price(self, symbol: str) -> Decimal:
        self.price_calls += 1
        time.sleep(self.delay)
        return super().latest_price(symbol)


def health(uow: UnitOfWork, symbol: str = "AAPL") -> PriceHealth:
    with uow:
        row = uow.session.get(PriceHealth, symbol)
    assert row is not None
    return row


def freeze_of(uow: UnitOfWork, symbol: str = "AAPL") -> SymbolFreeze | None:
    with uow:
        return uow.session.get(SymbolFreeze, symbol)


def frozen_by_the_feed(uow: UnitOfWork, broker: PriceFeed) -> None:
    broker.unavailable = 3
    outcomes = [refresh_price(uow, broker, "AAPL", CONFIG, NOW + timedelta(seconds=n)) for n in (-60, -30, 0)]
    assert outcomes == [PriceOutcome.FAILED, PriceOutcome.FAILED, PriceOutcome.FROZE]


def manual_freeze(uow: UnitOfWork, reason: str = "earnings", source: str = "manual") -> None:
    with uow:
        uow.session.add(SymbolFreeze(symbol="AAPL", reason=reason, source=source, frozen_at=NOW))
        uow.commit()


def test_a_good_price_is_recorded_and_resets_the_failure_count(uow: UnitOfWork) -> None:
    broker = PriceFeed()
    broker.unavailable = 2
    for _ in range(2):
        assert refresh_price(uow, broker, "AAPL", CONFIG, NOW) is PriceOutcome.FAILED
    assert health(uow).consecutive_failures == 2
    assert refresh_price(uow, broker, "AAPL", CONFIG, NOW) is PriceOutcome.FETCHED
    row = health(uow)
    assert (row.last_price, row.last_price_at, row.consecutive_failures, row.state) == (D("187.25"), NOW, 0, "closed")
    assert freeze_of(uow) is None


def test_three_failures_in_a_row_freeze_the_symbol_automatically(uow: UnitOfWork) -> None:
    broker = PriceFeed()
    frozen_by_the_feed(uow, broker)
    freeze = freeze_of(uow)
    assert freeze is not None and freeze.source == "prices"
    assert freeze.reason == "price feed failed 3 times: TemporaryError: 503 Service Unavailable"
    row = health(uow)
    assert (row.state, row.consecutive_failures, row.cooldown_until) == ("open", 3, AFTER_COOLDOWN)


def test_a_frozen_symbol_is_not_ordered_while_its_trades_keep_accumulating(uow: UnitOfWork) -> None:
    broker = PriceFeed()
    store_trades(uow, [IncomingTrade("t1", "AAPL", Side.BUY, D("1.5"), D("100"), NOW)])
    [pending] = accumulate_symbol(uow, "AAPL", ACCUMULATION, NOW).executions
    frozen_by_the_feed(uow, broker)

    assert submit_execution(uow, broker.by_account, pending, EXECUTION, NOW).outcome is SubmitOutcome.FROZEN
    store_trades(uow, [IncomingTrade(f"t{n}", "AAPL", Side.BUY, D("0.75"), D("100"), NOW) for n in (2, 3, 4)])
    accumulated = accumulate_symbol(uow, "AAPL", ACCUMULATION, NOW)
    assert (accumulated.applied, accumulated.executions) == (3, [])
    with uow:
        assert uow.session.get(Accumulator, "AAPL").net_quantity == D("2.75")  # type: ignore[union-attr]
        assert uow.session.scalars(select(Execution.status)).all() == ["pending"]
        uow.session.add(Position(account="default", symbol="AAPL", quantity=D(10), average_price=D(100)))
        uow.commit()
    with pytest.raises(Refused, match="AAPL is frozen: price feed failed"):
        request_exit(
            uow,
            TradingPolicy(frozenset(), frozenset({"default"})),
            VenueRules(),
            symbol="AAPL",
            quantity=None,
            reason="stop loss",
            account="default",
            now=NOW,
        )
    assert broker.posts == {}


def test_nothing_is_fetched_before_the_cooldown_ends(uow: UnitOfWork) -> None:
    broker = PriceFeed()
    frozen_by_the_feed(uow, broker)
    calls = broker.price_calls
    for seconds in (1, 150, 299):
        assert refresh_price(uow, broker, "AAPL", CONFIG, NOW + timedelta(seconds=seconds)) is PriceOutcome.COOLING
    assert broker.price_calls == calls and freeze_of(uow) is not None


def test_a_successful_probe_after_the_cooldown_thaws_the_symbol(uow: UnitOfWork) -> None:
    broker = PriceFeed()
    frozen_by_the_feed(uow, broker)
    assert refresh_price(uow, broker, "AAPL", CONFIG, AFTER_COOLDOWN) is PriceOutcome.THAWED
    assert freeze_of(uow) is None
    row = health(uow)
    assert (row.state, row.consecutive_failures, row.cooldown_until, row.last_price) == ("closed", 0, None, D("187.25"))
    # Thawed: the symbol's net is ordered again.
    store_trades(uow, [IncomingTrade("t1", "AAPL", Side.BUY, D("1.5"), D("100"), AFTER_COOLDOWN)])
    assert len(accumulate_symbol(uow, "AAPL", ACCUMULATION, AFTER_COOLDOWN).executions) == 1


def test_a_failed_probe_reopens_the_breaker_for_another_cooldown(uow: UnitOfWork) -> None:
    broker = PriceFeed()
    frozen_by_the_feed(uow, broker)
    broker.unavailable = 1
    assert refresh_price(uow, broker, "AAPL", CONFIG, AFTER_COOLDOWN) is PriceOutcome.REOPENED
    row = health(uow)
    assert (row.state, row.consecutive_failures) == ("open", 4)
    assert row.cooldown_until == AFTER_COOLDOWN + timedelta(seconds=300)
    assert freeze_of(uow) is not None
    calls = broker.price_calls
    assert refresh_price(uow, broker, "AAPL", CONFIG, AFTER_COOLDOWN + timedelta(seconds=299)) is PriceOutcome.COOLING
    assert broker.price_calls == calls
    later = AFTER_COOLDOWN + timedelta(seconds=300)
    assert refresh_price(uow, broker, "AAPL", CONFIG, later) is PriceOutcome.THAWED


def test_of_many_concurrent_workers_after_the_cooldown_only_one_probes(clean_database: str) -> None:
    uow = UnitOfWork(clean_database)
    broker = PriceFeed()
    frozen_by_the_feed(uow, broker)
    broker.price_calls, broker.delay = 0, 0.3  # float-ok: the probe stays in flight while the others try
    workers = 8
    start = threading.Barrier(workers)
    outcomes: list[PriceOutcome] = []

    def worker() -> None:
        start.wait()
        outcomes.append(refresh_price(UnitOfWork(clean_database), broker, "AAPL", CONFIG, AFTER_COOLDOWN))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert broker.price_calls == 1
    assert sorted(outcomes) == sorted([PriceOutcome.THAWED] + [PriceOutcome.PROBING_ELSEWHERE] * (workers - 1))
    assert freeze_of(uow) is None


def test_a_second_claimer_waits_for_the_first_claim_and_then_does_not_probe(clean_database: str) -> None:
    uow = UnitOfWork(clean_database)
    broker = PriceFeed()
    frozen_by_the_feed(uow, broker)
    broker.price_calls = 0
    outcomes: list[PriceOutcome] = []
    second = threading.Thread(
        target=lambda: outcomes.append(
            refresh_price(UnitOfWork(clean_database), broker, "AAPL", CONFIG, AFTER_COOLDOWN)
        )
    )
    first = UnitOfWork(clean_database)
    with first:
        claim = claim_fetch(first.session, "AAPL", CONFIG, AFTER_COOLDOWN)
        assert not isinstance(claim, PriceOutcome) and claim.probe  # claimed, not committed yet
        second.start()
        second.join(timeout=1)
        assert second.is_alive()  # waiting for the first claim's row lock
        first.commit()
    second.join(timeout=30)
    assert outcomes == [PriceOutcome.PROBING_ELSEWHERE] and broker.price_calls == 0
    assert health(uow).state == "half_open"


def test_a_probe_whose_worker_died_can_be_claimed_again_after_its_lease(uow: UnitOfWork) -> None:
    broker = PriceFeed()
    frozen_by_the_feed(uow, broker)
    with uow:  # a worker claimed the probe, then died before answering
        uow.session.get(PriceHealth, "AAPL").state = "half_open"  # type: ignore[union-attr]
        uow.session.get(PriceHealth, "AAPL").cooldown_until = AFTER_COOLDOWN + timedelta(seconds=60)  # type: ignore[union-attr]
        uow.commit()
    lease_running = AFTER_COOLDOWN + timedelta(seconds=30)
    assert refresh_price(uow, broker, "AAPL", CONFIG, lease_running) is PriceOutcome.PROBING_ELSEWHERE
    lease_over = AFTER_COOLDOWN + timedelta(seconds=60)
    assert refresh_price(uow, broker, "AAPL", CONFIG, lease_over) is PriceOutcome.THAWED


@pytest.mark.parametrize(
    ("source", "reason"),
    [("manual", "earnings"), ("rejections", "3 orders in a row failed; last: rejected")],
    ids=["operator", "after-rejections"],
)
def test_a_freeze_the_breaker_did_not_create_survives_a_successful_probe(
    uow: UnitOfWork, source: str, reason: str
) -> None:
    broker = PriceFeed()
    manual_freeze(uow, reason, source)
    frozen_by_the_feed(uow, broker)
    assert refresh_price(uow, broker, "AAPL", CONFIG, AFTER_COOLDOWN) is PriceOutcome.THAWED
    freeze = freeze_of(uow)
    assert freeze is not None and (freeze.source, freeze.reason) == (source, reason)
    assert health(uow).state == "closed"


def test_the_symbols_that_matter_are_watched(uow: UnitOfWork) -> None:
    with uow:
        session = uow.session
        session.add_all([Accumulator(symbol="ACC"), Accumulator(symbol="AUT-USD")])
        session.add_all(
            [
                Position(account="default", symbol="HELD", quantity=D(-2)),
                Position(account="default", symbol="FLAT", quantity=D(0)),
            ]
        )
        session.add_all(
            [
                Lot(account="default", symbol="LOT", quantity=D("0.3"), status="open"),
                Lot(account="default", symbol="SOLD", quantity=D(1), status="sold"),
            ]
        )
        session.add(PriceHealth(symbol="OPEN", state="open", cooldown_until=NOW))
        session.add(PriceHealth(symbol="FINE", state="closed"))
        session.commit()
    assert symbols_to_watch(uow, frozenset({"AUT-USD"})) == ["ACC", "HELD", "LOT", "OPEN"]


def dustpan(*args: str, database_url: str, broker_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(DUSTPAN_DATABASE_URL=database_url, DUSTPAN_BROKER_URL=broker_url)
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_cli_freeze_and_unfreeze_round_trip(clean_database: str, broker_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dustpan(*args, database_url=clean_database, broker_url=broker_url, cwd=tmp_path)

    frozen = run("freeze", "AAPL", "--reason", "earnings call")
    assert (frozen.returncode, frozen.stdout.strip()) == (0, "AAPL frozen"), frozen.stderr
    assert "already frozen" in run("freeze", "AAPL").stdout
    listed = run("freezes")
    assert listed.returncode == 0 and "AAPL" in listed.stdout and "manual" in listed.stdout
    assert "earnings call" in listed.stdout
    freeze = freeze_of(UnitOfWork(clean_database))
    assert freeze is not None and (freeze.source, freeze.reason) == ("manual", "earnings call")

    thawed = run("unfreeze", "AAPL")
    assert (thawed.returncode, thawed.stdout.strip()) == (0, "AAPL unfrozen")
    assert freeze_of(UnitOfWork(clean_database)) is None
    assert run("unfreeze", "AAPL").returncode == 1
    assert "no frozen symbols" in run("freezes").stdout
    refused = run("freeze", "aapl")
    assert refused.returncode == 2 and "not a symbol" in refused.stderr
