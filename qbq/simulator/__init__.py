"""An OpenAI-compatible chat completions simulator for tests and demos; its output is simulated."""

from qbq.simulator.app import SimState, create_app
from qbq.simulator.config import SimConfig, sim_config_from_cli
from qbq.simulator.faults import FAULT_KINDS
from qbq.simulator.grading import simulated_mark
from qbq.simulator.server import BackgroundServer, serve

__all__ = [
    "FAULT_KINDS",
    "BackgroundServer",
    "SimConfig",
    "SimState",
    "create_app",
    "serve",
    "sim_config_from_cli",
    "simulated_mark",
]
