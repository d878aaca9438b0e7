"""Where the CLI writes: rich consoles made when a command prints, not when a module is
imported, so each takes the terminal's width (or `COLUMNS`) of the moment it is used."""

from __future__ import annotations

from rich.console import Console

__all__ = ["stderr", "stdout"]


def stdout() -> Console:
    """A console on standard output (results, tables, progress)."""
    return Console()


def stderr() -> Console:
    """A console on standard error (errors and what a command stopped on)."""
    return Console(stderr=True)
