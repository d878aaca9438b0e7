"""Reference results API: a small stand-in for the school platform's results endpoint."""

from __future__ import annotations

from qbq.receiver.app import create_app

__all__ = ["create_app"]
