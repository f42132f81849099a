"""Set-based reads and writes of the dust scan: one statement per step, never one per lot.

Row values travel as arrays through ``unnest``, so a scan over 100,000 lots is a handful of
round trips. The decisions themselves are made in ``models.domain.dust``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models.domain.dust import PENDING_NOTE
from models.tables import SymbolFreeze
from models.tables_ops import PriceHealth

LIVE_AGGREGATE_WHERE = "kind = 'aggregate' AND status IN ('dust_pending', 'dust_ready', 'selling')"


class Holding(NamedTuple):  # a tuple: 100,000 of them are built per scan
    id: int
    account: str
    symbol: str
    quantity: Decimal


@dataclass
class Aggregate:
    """A live aggregate as the scan sees and changes it; written back by ``write_aggregates``."""

    id: int
    account: str
    symbol: str
    quantity: Decimal
    status: str
    note: str | None
    price: Decimal | None
    execution_id: uuid.UUID | None = None
    changed: bool = False


class Move(NamedTuple):
    """``dust`` of lot ``lot_id`` joins ``aggregate_id``; ``keep`` > 0 splits the lot."""

    lot_id: int
    account: str
    symbol: str
    keep: Decimal
    dust: Decimal
    aggregate_id: int
    price: Decimal | None


def scanned_symbols(session: Session) -> list[str]:
    return list(
        session.scalars(
            text(
                "SELECT DISTINCT symbol FROM lots WHERE (kind = 'holding' AND status = 'open' AND quantity > 0) "
                f"OR ({LIVE_AGGREGATE_WHERE})"
            )
        )
    )


def recorded_prices(session: Session, symbols: Iterable[str], since: datetime) -> dict[str, Decimal]:
    """Last good prices from the price job, younger than ``since``, of symbols whose breaker is closed."""
    rows = session.execute(
        select(PriceHealth.symbol, PriceHealth.last_price).where(
            PriceHealth.symbol.in_(list(symbols)),
            PriceHealth.state == "closed",
            PriceHealth.last_price.is_not(None),
            PriceHealth.last_price_at >= since,
        )
    )
    return {symbol: price for symbol, price in rows if price is not None}


def frozen_symbols(session: Session) -> frozenset[str]:
    return frozenset(session.scalars(select(SymbolFreeze.symbol)))


def open_holdings(session: Session) -> list[Holding]:
    # The driver's cursor directly: this is the one read that grows with the number of lots.
    cursor = session.connection().connection.cursor()
    try:
        cursor.execute(
            "SELECT id, account, symbol, quantity FROM lots "
            "WHERE kind = 'holding' AND status = 'open' AND quantity > 0 ORDER BY id"
        )
        return list(map(Holding._make, cursor.fetchall()))
    finally:
        cursor.close()


def lock_open_holdings(session: Session, ids: list[int]) -> dict[int, Decimal]:
    """Lock the lots about to move, in id order; a lot no longer open is left out.

    Re-read under the lock: the quantity that moves is the one no other writer can change."""
    if not ids:
        return {}
    rows = session.execute(
        text(
            "SELECT id, quantity FROM lots WHERE id = ANY(CAST(:ids AS bigint[])) "
            "AND kind = 'holding' AND status = 'open' ORDER BY id FOR UPDATE"
        ),
        {"ids": _array(ids)},
    )
    return {lot_id: quantity for lot_id, quantity in rows}


def lock_live_aggregates(session: Session) -> list[Aggregate]:
    # Locked so that a settling sale (selling -> sold) and this scan change an aggregate one at a time.
    rows = session.execute(
        text(
            "SELECT id, account, symbol, quantity, status, note, price, execution_id FROM lots "
            f"WHERE {LIVE_AGGREGATE_WHERE} ORDER BY id FOR UPDATE"
        )
    )
    return [
        Aggregate(r.id, r.account, r.symbol, r.quantity, r.status, r.note, r.price, _uuid(r.execution_id)) for r in rows
    ]


def _uuid(value: object) -> uuid.UUID | None:
    return None if value is None else value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def create_aggregates(session: Session, groups: list[tuple[str, str]], now: datetime) -> list[Aggregate]:
    """One new pending aggregate per account+symbol. The partial unique index allows one live
    aggregate per pair: a conflict means another writer made one, and the scan starts over."""
    if not groups:
        return []
    rows = session.execute(
        text(
            "INSERT INTO lots (account, symbol, kind, source, quantity, status, note, created_at, updated_at) "
            "SELECT g.account, g.symbol, 'aggregate', 'dust_scan', 0, 'dust_pending', :note, :now, :now "
            "FROM unnest(CAST(:accounts AS text[]), CAST(:symbols AS text[])) AS g(account, symbol) "
            "ORDER BY g.account, g.symbol "
            f"ON CONFLICT (account, symbol) WHERE {LIVE_AGGREGATE_WHERE} DO NOTHING "
            "RETURNING id, account, symbol"
        ),
        {
            "accounts": _array(g[0] for g in groups),
            "symbols": _array(g[1] for g in groups),
            "note": PENDING_NOTE,
            "now": now,
        },
    ).all()
    if len(rows) != len(groups):
        raise RuntimeError("a live dust aggregate appeared during the scan; nothing was changed")
    return [Aggregate(row.id, row.account, row.symbol, Decimal(0), "dust_pending", PENDING_NOTE, None) for row in rows]


def move_into_aggregates(session: Session, moves: list[Move], now: datetime) -> None:
    """A lot that is dust as a whole joins its aggregate (``dust_aggregated``, lineage in
    ``aggregate_id``); a split lot keeps its tradable part and its dust becomes a lot of its own
    inside the aggregate."""
    if not moves:
        return
    session.execute(
        text(
            "UPDATE lots AS l SET "
            "status = CASE WHEN m.keep = 0 THEN 'dust_aggregated' ELSE l.status END, "
            "aggregate_id = CASE WHEN m.keep = 0 THEN m.aggregate_id ELSE l.aggregate_id END, "
            "quantity = CASE WHEN m.keep = 0 THEN l.quantity ELSE m.keep END, "
            "price = coalesce(m.price, l.price), updated_at = :now "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:keeps AS numeric[]), CAST(:aggregates AS bigint[]), "
            "CAST(:prices AS numeric[])) AS m(id, keep, aggregate_id, price) WHERE l.id = m.id"
        ),
        {
            "ids": _array(m.lot_id for m in moves),
            "keeps": _array(m.keep for m in moves),
            "aggregates": _array(m.aggregate_id for m in moves),
            "prices": _array(m.price for m in moves),
            "now": now,
        },
    )
    split = [m for m in moves if m.keep > 0]
    if not split:
        return
    session.execute(
        text(
            "INSERT INTO lots (account, symbol, kind, source, quantity, price, status, note, aggregate_id, "
            "created_at, updated_at) "
            "SELECT m.account, m.symbol, 'holding', 'remainder', m.dust, m.price, 'dust_aggregated', "
            "'Dust split from lot #' || m.parent, m.aggregate_id, :now, :now "
            "FROM unnest(CAST(:accounts AS text[]), CAST(:symbols AS text[]), CAST(:dusts AS numeric[]), "
            "CAST(:prices AS numeric[]), CAST(:parents AS bigint[]), CAST(:aggregates AS bigint[])) "
            "AS m(account, symbol, dust, price, parent, aggregate_id)"
        ),
        {
            "accounts": _array(m.account for m in split),
            "symbols": _array(m.symbol for m in split),
            "dusts": _array(m.dust for m in split),
            "prices": _array(m.price for m in split),
            "parents": _array(m.lot_id for m in split),
            "aggregates": _array(m.aggregate_id for m in split),
            "now": now,
        },
    )


def write_aggregates(session: Session, aggregates: Iterable[Aggregate], now: datetime) -> None:
    changed = [a for a in aggregates if a.changed]
    if not changed:
        return
    session.execute(
        text(
            "UPDATE lots AS l SET quantity = a.quantity, status = a.status, note = a.note, price = a.price, "
            "execution_id = a.execution_id, updated_at = :now "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:quantities AS numeric[]), CAST(:statuses AS text[]), "
            "CAST(:notes AS text[]), CAST(:prices AS numeric[]), CAST(:executions AS uuid[])) "
            "AS a(id, quantity, status, note, price, execution_id) WHERE l.id = a.id"
        ),
        {
            "ids": _array(a.id for a in changed),
            "quantities": _array(a.quantity for a in changed),
            "statuses": _array(a.status for a in changed),
            "notes": _array(a.note for a in changed),
            "prices": _array(a.price for a in changed),
            "executions": _array(a.execution_id for a in changed),
            "now": now,
        },
    )


def _array(values: Iterable[object]) -> str:
    """A PostgreSQL array literal, sent as one text value: the driver would otherwise inline
    ``ARRAY[...]`` with one expression per element for the server to parse and plan.
    Numbers go as they print; anything else is quoted (text, uuid)."""
    return "{" + ",".join(["NULL" if v is None else _quoted(v) if _is_text(v) else str(v) for v in values]) + "}"


def _is_text(value: object) -> bool:
    return not isinstance(value, int | Decimal)


def _quoted(value: object) -> str:
    text_value = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text_value}"'
