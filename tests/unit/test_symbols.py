from __future__ import annotations

import pytest

from models.domain.symbols import canonical_symbol, is_crypto, is_restricted


@pytest.mark.parametrize(
    ("written", "crypto", "canonical"),
    [
        ("BTC/USD", False, "BTC/USD"),
        ("BTC-USD", False, "BTC/USD"),
        ("BTCUSD", True, "BTC/USD"),  # positions glue the pair; the broker says it is crypto
        ("BTCUSD", False, "BTCUSD"),  # without that word a glued name cannot be split
        ("USDTUSD", True, "USDT/USD"),
        ("ETHUSDT", True, "ETH/USDT"),  # USDT wins over USD
        ("AUT-USD", False, "AUT/USD"),
        ("BRK.B", False, "BRK.B"),
        ("BF-B", False, "BF-B"),  # a share class, not a pair
        ("AAPL", True, "AAPL"),
    ],
)
def test_one_spelling_per_symbol(written: str, crypto: bool, canonical: str) -> None:
    assert canonical_symbol(written, crypto=crypto) == canonical


def test_restricted_symbols_match_in_every_spelling() -> None:
    restricted = frozenset({"AUT-USD"})
    assert is_restricted("AUT/USD", restricted) and is_restricted("AUT-USD", restricted)
    assert not is_restricted("AUTO", restricted)
    assert is_crypto("ETH-USD") and not is_crypto("AAPL")
