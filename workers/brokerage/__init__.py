"""The brokerage port and its adapters (paper, alpaca)."""

from workers.brokerage.base import (
    AccountBalance,
    Asset,
    Brokerage,
    BrokerageError,
    BrokerOrder,
    BrokerPosition,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    OperationalError,
    OrderRequest,
    RateLimited,
    TemporaryError,
)

__all__ = [
    "AccountBalance",
    "Asset",
    "BrokerOrder",
    "BrokerPosition",
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
