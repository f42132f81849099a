"""Price feed health and automatic symbol freezes (SPEC 1.6): a circuit breaker per symbol.

closed     prices are fetched; each failure in a row is counted, a good price resets the count.
open       after ``freeze_after_failures`` failures the symbol is frozen (a ``SymbolFreeze`` with
           source 'prices') and nothing is fetched until ``cooldown_until``.
half_open  once the cooldown is over one worker claims the single probe (an UPDATE that only one
           transaction can win); success thaws the symbol, failure re-opens it for another cooldown.

No lock is held while the feed is asked: the claim is committed first, the answer recorded after.
A claimed probe is a lease (``cooldown_until`` = claim + lease): if its worker dies, the probe
can be claimed again when the lease ends. The breaker only ever lifts the freeze it created;
an operator's freeze (source 'manual') or a freeze after rejected orders stays.
There is no retry inside one refresh: the next Beat tick is the retry, and the count is the backoff.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.symbols import is_restricted
from models.tables import Accumulator, Position, SymbolFreeze
from models.tables_ops import Lot, PriceHealth
from tasks.ports import Brokerage, BrokerageError

log = logging.getLogger(__name__)

# The reason of every freeze the breaker creates starts with this: it is how a thaw tells its
# own freeze from an operator's or one after rejected orders (both also possible on the symbol).
FREEZE_REASON_PREFIX = "price feed failed"
MAX_ERROR_TEXT = 300


class PriceOutcome(StrEnum):
    FETCHED = "fetched"
    FAILED = "failed"  # counted; the breaker is still closed
    FROZE = "froze"  # this failure opened the breaker and froze the symbol
    COOLING = "cooling"  # open and cooling down: nothing fetched
    PROBING_ELSEWHERE = "probing_elsewhere"  # another worker holds the one probe
    THAWED = "thawed"  # the probe succeeded
    REOPENED = "reopened"  # the probe failed: frozen for another cooldown
    ERROR = "error"  # unexpected; logged, the other symbols go on


@dataclass(frozen=True)
class PriceConfig:
    freeze_after_failures: int = 3
    cooldown_seconds: int = 300
    probe_lease_seconds: int = 60  # a probe not answered by then may be claimed again


@dataclass(frozen=True)
class _Claim:
    probe: bool
    lease_until: datetime | None = None


def refresh_price(
    uow: UnitOfWork, brokerage: Brokerage, symbol: str, config: PriceConfig, now: datetime
) -> PriceOutcome:
    with uow:
        claim = claim_fetch(uow.session, symbol, config, now)
        uow.commit()
    if isinstance(claim, PriceOutcome):
        return claim
    price, error = _read_price(brokerage, symbol)
    with uow:
        outcome = _record(uow.session, symbol, claim, price, error, config, now)
        uow.commit()
    return outcome


def refresh_prices(
    uow: UnitOfWork, brokerage: Brokerage, symbols: Iterable[str], config: PriceConfig, now: datetime
) -> Counter[PriceOutcome]:
    """Every symbol in turn; one that fails unexpectedly does not stop the others."""
    outcomes: Counter[PriceOutcome] = Counter()
    for symbol in symbols:
        try:
            outcomes[refresh_price(uow, brokerage, symbol, config, now)] += 1
        except Exception:
            log.exception("price refresh of %s failed", symbol)
            outcomes[PriceOutcome.ERROR] += 1
    return outcomes


def symbols_to_watch(uow: UnitOfWork, restricted: frozenset[str]) -> list[str]:
    """Symbols that matter: accumulated, held, in lots, or with a breaker not closed (so it can thaw)."""
    with uow:
        session = uow.session
        found = set(session.scalars(select(Accumulator.symbol)))
        found |= set(session.scalars(select(Position.symbol).where(Position.quantity != 0)))
        found |= set(
            session.scalars(select(Lot.symbol).where(Lot.quantity > 0, Lot.status.not_in(("sold", "dust_aggregated"))))
        )
        found |= set(session.scalars(select(PriceHealth.symbol).where(PriceHealth.state != "closed")))
    return sorted(symbol for symbol in found if not is_restricted(symbol, restricted))


def claim_fetch(session: Session, symbol: str, config: PriceConfig, now: datetime) -> _Claim | PriceOutcome:
    """May this worker ask the feed now: a plain fetch (closed), the one probe (claimed), or not."""
    session.execute(
        insert(PriceHealth).values(symbol=symbol, updated_at=now).on_conflict_do_nothing(index_elements=["symbol"])
    )
    lease_until = now + timedelta(seconds=config.probe_lease_seconds)
    # Under READ COMMITTED a second claimer waits for the first's row lock, then re-checks the
    # WHERE against the committed row (now half_open, lease in the future) and matches nothing.
    claimed = session.scalar(
        update(PriceHealth)
        .where(
            PriceHealth.symbol == symbol,
            PriceHealth.state.in_(("open", "half_open")),
            or_(PriceHealth.cooldown_until.is_(None), PriceHealth.cooldown_until <= now),
        )
        .values(state="half_open", cooldown_until=lease_until, updated_at=now)
        .returning(PriceHealth.symbol)
    )
    if claimed is not None:
        return _Claim(probe=True, lease_until=lease_until)
    state = session.scalar(select(PriceHealth.state).where(PriceHealth.symbol == symbol))
    if state == "closed":
        return _Claim(probe=False)
    return PriceOutcome.COOLING if state == "open" else PriceOutcome.PROBING_ELSEWHERE


def _read_price(brokerage: Brokerage, symbol: str) -> tuple[Decimal | None, str | None]:
    try:
        price = brokerage.latest_price(symbol)
    except BrokerageError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]
    if not price.is_finite() or price <= 0:
        return None, f"unusable price {price}"
    return price, None


def _record(
    session: Session,
    symbol: str,
    claim: _Claim,
    price: Decimal | None,
    error: str | None,
    config: PriceConfig,
    now: datetime,
) -> PriceOutcome:
    # The row lock serialises concurrent refreshes of one symbol (overlapping Beat runs).
    health = session.scalars(select(PriceHealth).where(PriceHealth.symbol == symbol).with_for_update()).one()
    health.updated_at = now
    if price is not None:
        health.last_price, health.last_price_at = price, now
    health.last_error = error
    our_probe = claim.probe and health.state == "half_open" and health.cooldown_until == claim.lease_until
    if claim.probe and not our_probe:
        return PriceOutcome.FETCHED if price is not None else PriceOutcome.FAILED  # our lease ran out
    if not claim.probe and health.state != "closed":
        return PriceOutcome.FETCHED if price is not None else PriceOutcome.FAILED  # opened meanwhile
    if price is not None:
        health.consecutive_failures, health.state, health.cooldown_until = 0, "closed", None
        if claim.probe:
            _thaw(session, symbol)
            return PriceOutcome.THAWED
        return PriceOutcome.FETCHED
    health.consecutive_failures += 1
    if claim.probe or health.consecutive_failures >= config.freeze_after_failures:
        health.state, health.cooldown_until = "open", now + timedelta(seconds=config.cooldown_seconds)
        _freeze(session, symbol, health.consecutive_failures, error or "", now)
        return PriceOutcome.REOPENED if claim.probe else PriceOutcome.FROZE
    return PriceOutcome.FAILED


def _freeze(session: Session, symbol: str, failures: int, error: str, now: datetime) -> None:
    """Freeze unless already frozen: an existing freeze (manual or not) is kept as it is."""
    session.execute(
        insert(SymbolFreeze)
        .values(
            symbol=symbol,
            reason=f"{FREEZE_REASON_PREFIX} {failures} times: {error}"[:MAX_ERROR_TEXT],
            source="prices",
            frozen_at=now,
        )
        .on_conflict_do_nothing(index_elements=["symbol"])
    )


def _thaw(session: Session, symbol: str) -> None:
    session.execute(
        delete(SymbolFreeze).where(
            SymbolFreeze.symbol == symbol,
            SymbolFreeze.source == "prices",  # never an operator's freeze, nor one for rejected orders
        )
    )
