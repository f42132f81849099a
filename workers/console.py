"""Consoles of the `dustpan` commands: tables that never cut a decimal short, spinners on stderr."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

# Into a pipe or a file rich would assume 80 columns and cut long cells with "…": an exact
# 18-decimal quantity must survive `dustpan report > books.txt` whole, on one line.
PIPE_WIDTH = 240


def table_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)


def table(title: str, columns: Iterable[str], right: Iterable[str] = ()) -> Table:
    """A table whose cells fold onto a second line on a narrow terminal instead of being cut."""
    aligned_right = set(right)
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column in aligned_right else "left", overflow="fold")
    return table


@contextmanager
def spinner(description: str) -> Iterator[None]:
    """A spinner while a command works, on stderr so that stdout stays clean for --json
    (rich draws nothing when stderr is not a terminal)."""
    with Console(stderr=True).status(description):
        yield
