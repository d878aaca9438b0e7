"""An OpenAI-compatible chat completions simulator for tests and demos; its output is simulated."""

from qbq.simulator.app import SimState, create_app
from qbq.simulator.config import SimConfig
from qbq.simulator.grading import simulated_mark
from qbq.simulator.server import BackgroundServer, serve

__all__ = ["BackgroundServer", "SimConfig", "SimState", "create_app", "serve", "simulated_mark"]
