"""The brokerage port and its adapters (paper, alpaca)."""

from workers.brokerage.base import (
    Brokerage,
    BrokerageError,
    BrokerOrder,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    OperationalError,
    OrderRequest,
    RateLimited,
    TemporaryError,
)

__all__ = [
    "BrokerOrder",
    "Brokerage",
    "BrokerageError",
    "DuplicateClientOrderId",
    "InsufficientFunds",
    "InvalidOrder",
    "OperationalError",
    "OrderRequest",
    "RateLimited",
    "TemporaryError",
]
