"""Fields bound to every log record of a block: the task wrappers say which symbol or execution
they work on, and workers/logging_setup.py writes the fields into each line."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

_context: ContextVar[Mapping[str, Any]] = ContextVar("dustpan_log_context", default=MappingProxyType({}))


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach these fields to every record logged inside the block (on this thread or task)."""
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


def bound_fields() -> Mapping[str, Any]:
    return _context.get()
