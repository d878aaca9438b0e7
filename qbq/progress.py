"""A tiny in-process event hub so a terminal progress bar can follow a flow run's batches."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["BatchProgress", "publish", "subscribed"]


@dataclass(frozen=True)
class BatchProgress:
    """A batch finished; counts only (no personal data)."""

    process_id: str
    done: int
    total: int
    status: str
    from_store: bool


_lock = threading.Lock()
_listeners: list[Callable[[BatchProgress], None]] = []


def publish(event: BatchProgress) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(event)


@contextmanager
def subscribed(listener: Callable[[BatchProgress], None]) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
