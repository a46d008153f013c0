"""A DXLink server with a deterministic market, for tests and for running without an account.

``Simulator`` serves candles over the same protocol as tastytrade (handshake, channels, FEED
setup, snapshots, live updates, keepalive), from a seeded ``Market`` in which every period is
the exact aggregate of the same trades, on a ``SimulatorClock`` that tests advance by hand.
Faults (drops, stalls, errors, token expiry, 1009, BAD_ACTION...) are injected from Python or
from ``candles simulate --fault``.
"""

from __future__ import annotations

from pipeline.simulator.clock import SimulatorClock
from pipeline.simulator.connection import SimulatorStats
from pipeline.simulator.faults import FAULT_HELP, Fault, FaultKind, parse_fault
from pipeline.simulator.market import Market, MarketConfig
from pipeline.simulator.periods import Period
from pipeline.simulator.server import Simulator
from pipeline.simulator.session import Series

__all__ = [
    "FAULT_HELP",
    "Fault",
    "FaultKind",
    "Market",
    "MarketConfig",
    "Period",
    "Series",
    "Simulator",
    "SimulatorClock",
    "SimulatorStats",
    "parse_fault",
]
