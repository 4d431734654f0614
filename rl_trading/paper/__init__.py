"""Paper trading: a registered policy on bars that arrive one at a time (docs/paper_trading.md).

`model.resolve_model` finds the policy, `feeds` bring bars (replay, SQL, file),
`broker.SimulatedBroker` fills them with the env's own engine, `ledger.Ledger` keeps every
bar's work in one SQL transaction, and `loop.PaperSession` ties them together.
"""

from rl_trading.paper.broker import Broker, OrderBatch, SimulatedBroker
from rl_trading.paper.ledger import Ledger, SessionInUse
from rl_trading.paper.loop import PaperOptions, PaperSession, SessionResult, StaleFeed
from rl_trading.paper.model import ResolvedModel, resolve_model

__all__ = [
    "Broker",
    "Ledger",
    "OrderBatch",
    "PaperOptions",
    "PaperSession",
    "ResolvedModel",
    "SessionInUse",
    "SessionResult",
    "SimulatedBroker",
    "StaleFeed",
    "resolve_model",
]
