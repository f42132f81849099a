"""The brokerage port and its adapters (paper, alpaca)."""

from tasks.ports import (
    AccountBalance,
    AccountRefused,
    Asset,
    Brokerage,
    BrokerageError,
    BrokerageMisconfigured,
    BrokerOrder,
    BrokerPosition,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    MalformedAnswer,
    OrderRequest,
    RateLimited,
    TemporaryError,
    UnresolvedOrder,
)

__all__ = [
    "AccountBalance",
    "AccountRefused",
    "Asset",
    "BrokerOrder",
    "BrokerPosition",
    "Brokerage",
    "BrokerageError",
    "BrokerageMisconfigured",
    "DuplicateClientOrderId",
    "InsufficientFunds",
    "InvalidOrder",
    "MalformedAnswer",
    "OrderRequest",
    "RateLimited",
    "TemporaryError",
    "UnresolvedOrder",
]
