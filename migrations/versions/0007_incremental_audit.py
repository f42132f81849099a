"""running totals kept by triggers, audit checkpoints, the background verifier, trade archive

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 07:10:00.000000

Triggers, not calls from the tasks: every writer (accumulation, execution, sales, tests, an
operator's psql) keeps the totals exact in its own transaction without knowing about them.
They are statement triggers over transition tables: one aggregate per statement, however
many rows it changed, and they append to symbol_total_deltas instead of updating a row per
symbol, so no writer waits on another's total and no new lock order can deadlock.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NUM = sa.Numeric(precision=38, scale=18)

# What one row adds to its symbol's totals. A trade counts once applied (any status but
# received/rejected, so a later 'completed' keeps counting); only hedges count as executions.
_TRADE_APPLIED = (
    "CASE WHEN r.status IN ('received', 'rejected') THEN 0 WHEN r.side = 'buy' THEN r.quantity ELSE -r.quantity END"
)
_EXEC_FILLED = (
    "CASE WHEN r.source <> 'hedge' THEN 0 WHEN r.side = 'buy' THEN r.filled_quantity ELSE -r.filled_quantity END"
)
_EXEC_IN_FLIGHT = (
    "CASE WHEN r.source <> 'hedge' OR r.status NOT IN ('pending', 'submitted') THEN 0"
    " WHEN r.side = 'buy' THEN r.quantity - r.filled_quantity ELSE r.filled_quantity - r.quantity END"
)

# table -> (trades_applied, filled, in_flight, returned) of one row aliased r
_CONTRIBUTIONS = {
    "trades": (_TRADE_APPLIED, "0", "0", "0"),
    "executions": ("0", _EXEC_FILLED, _EXEC_IN_FLIGHT, "0"),
    "execution_returns": ("0", "0", "0", "r.quantity"),
}


def _function_sql(table: str) -> str:
    applied, filled, in_flight, returned = _CONTRIBUTIONS[table]
    columns = f"r.symbol, {applied} AS a, {filled} AS f, {in_flight} AS i, {returned} AS r"
    return f"""
CREATE FUNCTION dustpan_totals_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Retention moves rows out with their sums carried into audit_checkpoints: totals keep them.
    IF TG_OP = 'DELETE' AND current_setting('dustpan.archiving', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO symbol_total_deltas (symbol, trades_applied, filled, in_flight, returned)
        SELECT symbol, sum(a), sum(f), sum(i), sum(r)
        FROM (SELECT {columns} FROM new_rows r) d
        GROUP BY symbol HAVING sum(a) <> 0 OR sum(f) <> 0 OR sum(i) <> 0 OR sum(r) <> 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO symbol_total_deltas (symbol, trades_applied, filled, in_flight, returned)
        SELECT symbol, -sum(a), -sum(f), -sum(i), -sum(r)
        FROM (SELECT {columns} FROM old_rows r) d
        GROUP BY symbol HAVING sum(a) <> 0 OR sum(f) <> 0 OR sum(i) <> 0 OR sum(r) <> 0;
    ELSE
        INSERT INTO symbol_total_deltas (symbol, trades_applied, filled, in_flight, returned)
        SELECT symbol, sum(a), sum(f), sum(i), sum(r)
        FROM (SELECT {columns} FROM new_rows r
              UNION ALL
              SELECT r.symbol, -({applied}), -({filled}), -({in_flight}), -({returned}) FROM old_rows r) d
        GROUP BY symbol HAVING sum(a) <> 0 OR sum(f) <> 0 OR sum(i) <> 0 OR sum(r) <> 0;
    END IF;
    RETURN NULL;
END
$$;
"""


def _triggers_sql(table: str, family: str = "totals") -> list[str]:
    function = f"dustpan_{family}_{table}()"
    return [
        f"CREATE TRIGGER {family}_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {function}",
        f"CREATE TRIGGER {family}_update AFTER UPDATE ON {table} REFERENCING OLD TABLE AS old_rows"
        f" NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}",
        f"CREATE TRIGGER {family}_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {function}",
    ]


def _backfill_sql(table: str) -> str:
    applied, filled, in_flight, returned = _CONTRIBUTIONS[table]
    return (
        "INSERT INTO symbol_total_deltas (symbol, trades_applied, filled, in_flight, returned)"
        f" SELECT r.symbol, sum({applied}), sum({filled}), sum({in_flight}), sum({returned})"
        f" FROM {table} r GROUP BY r.symbol"
    )


# table -> (kind, side, status, quantity, filled, proceeds, dust) of one row aliased r: what the
# report shows by symbol, side and status, kept like the running totals.
_BOOKS = {
    "trades": ("'trade'", "r.side", "r.status", "r.quantity", "0", "0", "0"),
    "executions": ("'execution'", "r.side", "r.status", "r.quantity", "r.filled_quantity", "0", "0"),
    "dust_ledger": ("'ledger'", "'sell'", "'filled'", "r.quantity", "0", "r.proceeds", "r.dust"),
}


def _books_function_sql(table: str) -> str:
    kind, side, status, quantity, filled, proceeds, dust = _BOOKS[table]
    key = f"{kind} AS k, r.symbol, {side} AS side, {status} AS status"
    new = f"SELECT {key}, 1 AS n, {quantity} AS q, {filled} AS f, {proceeds} AS p, {dust} AS d FROM new_rows r"
    old = (
        f"SELECT {key}, -1 AS n, -({quantity}) AS q, -({filled}) AS f, -({proceeds}) AS p, -({dust}) AS d"
        " FROM old_rows r"
    )
    insert = (
        "INSERT INTO book_total_deltas (kind, symbol, side, status, row_count, quantity, filled, proceeds, dust)"
        " SELECT k, symbol, side, status, sum(n), sum(q), sum(f), sum(p), sum(d) FROM ({rows}) d"
        " GROUP BY k, symbol, side, status"
        " HAVING sum(n) <> 0 OR sum(q) <> 0 OR sum(f) <> 0 OR sum(p) <> 0 OR sum(d) <> 0;"
    )
    return f"""
CREATE FUNCTION dustpan_books_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('dustpan.archiving', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        {insert.format(rows=new)}
    ELSIF TG_OP = 'DELETE' THEN
        {insert.format(rows=old)}
    ELSE
        {insert.format(rows=new + " UNION ALL " + old)}
    END IF;
    RETURN NULL;
END
$$;
"""


def _books_backfill_sql(table: str) -> str:
    kind, side, status, quantity, filled, proceeds, dust = _BOOKS[table]
    return (
        "INSERT INTO book_total_deltas (kind, symbol, side, status, row_count, quantity, filled, proceeds, dust)"
        f" SELECT {kind}, r.symbol, {side}, {status}, count(*), sum({quantity}), sum({filled}), sum({proceeds}),"
        f" sum({dust}) FROM {table} r GROUP BY 2, 3, 4"
    )


def _totals_columns() -> list[sa.Column]:
    return [sa.Column(name, _NUM, server_default="0", nullable=False) for name in _TOTALS]


_TOTALS = ("trades_applied", "filled", "in_flight", "returned")


def _book_columns() -> list[sa.Column]:
    return [
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("row_count", sa.BigInteger(), server_default="0", nullable=False),
        *[
            sa.Column(name, _NUM, server_default="0", nullable=False)
            for name in ("quantity", "filled", "proceeds", "dust")
        ],
    ]


def upgrade() -> None:
    op.create_table(
        "symbol_totals",
        sa.Column("symbol", sa.String(length=32), nullable=False),
        *_totals_columns(),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_symbol_totals")),
    )
    op.create_table(
        "symbol_total_deltas",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        *_totals_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_symbol_total_deltas")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("trade_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("execution_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("trades_applied", _NUM, server_default="0", nullable=False),
        sa.Column("filled", _NUM, server_default="0", nullable=False),
        sa.Column("archived_trades_applied", _NUM, server_default="0", nullable=False),
        sa.Column("archived_filled", _NUM, server_default="0", nullable=False),
        sa.Column("problems", sa.Text(), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_verifier",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("start_xid", sa.BigInteger(), nullable=True),
        sa.Column("trade_target", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("execution_target", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("trade_cursor_symbol", sa.String(length=32), nullable=True),
        sa.Column("trade_cursor_seq", sa.BigInteger(), nullable=True),
        sa.Column("execution_cursor_symbol", sa.String(length=32), nullable=True),
        sa.Column("execution_cursor_seq", sa.BigInteger(), nullable=True),
        sa.Column("trades_done", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("executions_done", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("passes", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_verifier_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_verifier")),
    )
    op.create_table(
        "audit_verifier_sums",
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("trades_applied", _NUM, server_default="0", nullable=False),
        sa.Column("filled", _NUM, server_default="0", nullable=False),
        sa.Column("trade_limit", sa.BigInteger(), nullable=True),
        sa.Column("execution_limit", sa.BigInteger(), nullable=True),
        sa.Column("problems", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_audit_verifier_sums")),
    )
    op.create_table(
        "book_totals",
        *_book_columns(),
        sa.PrimaryKeyConstraint("kind", "symbol", "side", "status", name=op.f("pk_book_totals")),
    )
    op.create_table(
        "book_total_deltas",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        *_book_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_book_total_deltas")),
    )
    op.create_table(
        "archived_trades",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("quantity", _NUM, nullable=False),
        sa.Column("price", _NUM, nullable=False),
        sa.Column("executed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("accumulated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("open_quantity", _NUM, nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archived_trades")),
    )
    op.create_table(
        "archived_contributions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("execution_id", sa.UUID(), nullable=False),
        sa.Column("trade_id", sa.String(length=128), nullable=True),
        sa.Column("return_id", sa.BigInteger(), nullable=True),
        sa.Column("quantity", _NUM, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archived_contributions")),
    )
    op.create_index(
        op.f("ix_archived_contributions_execution_id"), "archived_contributions", ["execution_id"], unique=False
    )
    # The audit reads a symbol's trades above its checkpoint; the verifier walks them in this order.
    op.create_index("ix_trades_symbol_seq", "trades", ["symbol", "seq"], unique=False)
    for table in _CONTRIBUTIONS:
        op.execute(_function_sql(table))
        for statement in _triggers_sql(table):
            op.execute(statement)
        op.execute(_backfill_sql(table))
    for table in _BOOKS:
        op.execute(_books_function_sql(table))
        for statement in _triggers_sql(table, "books"):
            op.execute(statement)
        op.execute(_books_backfill_sql(table))


def downgrade() -> None:
    for family, tables in (("totals", _CONTRIBUTIONS), ("books", _BOOKS)):
        for table in tables:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER {family}_{event} ON {table}")
            op.execute(f"DROP FUNCTION dustpan_{family}_{table}()")
    op.drop_index(op.f("ix_archived_contributions_execution_id"), table_name="archived_contributions")
    op.drop_table("archived_contributions")
    op.drop_table("archived_trades")
    op.drop_table("book_total_deltas")
    op.drop_table("book_totals")
    op.drop_index("ix_trades_symbol_seq", table_name="trades")
    op.drop_table("audit_verifier_sums")
    op.drop_table("audit_verifier")
    op.drop_table("audit_checkpoints")
    op.drop_table("symbol_total_deltas")
    op.drop_table("symbol_totals")
