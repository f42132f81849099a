"""One spelling per symbol. Alpaca writes a crypto pair ``BTC/USD`` in orders, assets and market
data, but ``BTCUSD`` in positions, and configs often say ``AUT-USD``: all three are one symbol,
``BTC/USD``. Equity symbols pass through unchanged (``BRK.B`` stays ``BRK.B``)."""

from __future__ import annotations

from collections.abc import Iterable

# Quote currencies of Alpaca's crypto pairs, longest first so that USDT wins over USD.
CRYPTO_QUOTES = ("USDT", "USDC", "USD", "BTC")


def canonical_symbol(symbol: str, *, crypto: bool = False) -> str:
    """``BASE/QUOTE`` for a crypto pair in any of its spellings; ``crypto`` says the broker called
    it crypto, which is the only way to split a glued ``BTCUSD``."""
    text = symbol.strip().upper()
    if "/" in text:
        return text
    base, dash, quote = text.rpartition("-")
    if dash and base and quote in CRYPTO_QUOTES:
        return f"{base}/{quote}"
    if crypto:
        for quote in CRYPTO_QUOTES:
            if text.endswith(quote) and len(text) > len(quote):
                return f"{text[: -len(quote)]}/{quote}"
    return text


def is_crypto(symbol: str) -> bool:
    return "/" in canonical_symbol(symbol)


def is_restricted(symbol: str, restricted: Iterable[str]) -> bool:
    """Whether ``symbol``, in any spelling, is one of the ``restricted`` symbols (in any spelling)."""
    wanted = canonical_symbol(symbol)
    return any(canonical_symbol(entry) == wanted for entry in restricted)


__all__ = ["CRYPTO_QUOTES", "canonical_symbol", "is_crypto", "is_restricted"]
