"""An OpenAI-compatible simulator for tests and demos (chat completions, prompt caching,
reasoning, flex and the Batch API); its output is simulated."""

from qbq.simulator.app import create_app, stamp_arrival
from qbq.simulator.config import SimConfig, sim_config_from_cli
from qbq.simulator.faults import FAULT_KINDS
from qbq.simulator.grading import simulated_mark
from qbq.simulator.server import BackgroundServer, serve
from qbq.simulator.state import SimState

__all__ = [
    "FAULT_KINDS",
    "BackgroundServer",
    "SimConfig",
    "SimState",
    "create_app",
    "serve",
    "sim_config_from_cli",
    "simulated_mark",
    "stamp_arrival",
]
