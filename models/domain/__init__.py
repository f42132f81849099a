"""Pure Python + Decimal: quantities, accumulation and execution state. No I/O imports here."""
