"""The per-second timeline of a simulator run, in simulated seconds since the first request."""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["Second", "Timeline"]


class Second(TypedDict):
    """One second of simulated time.

    started: accepted requests that started in it; tokens: tokens charged to them (prompt
    plus completion budget); rejected: requests answered 429; in_flight: the most accepted
    requests in flight at once during it.
    """

    t: int
    started: int
    tokens: int
    rejected: int
    in_flight: int


class Timeline:
    """Counts per simulated second; second 0 begins with the first event after a reset.

    Not thread-safe on its own: the simulator calls it under its state lock.
    """

    def __init__(self) -> None:
        self._origin: float | None = None
        self._seconds: list[Second] = []
        self._in_flight = 0

    def reset(self) -> None:
        self._origin = None
        self._seconds = []
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _at(self, now: float) -> Second:
        if self._origin is None:
            self._origin = now
        t = max(0, int(now - self._origin))
        while len(self._seconds) <= t:
            # A request in flight when a second begins is in flight during it.
            self._seconds.append(
                Second(t=len(self._seconds), started=0, tokens=0, rejected=0, in_flight=self._in_flight)
            )
        return self._seconds[t]

    def start(self, now: float, tokens: int, *, in_flight_from: float | None = None) -> None:
        """A request started (charged) at `now`; it is in flight from `in_flight_from` (when
        it was admitted; default `now`)."""
        second = self._at(now)
        second["started"] += 1
        second["tokens"] += tokens
        self._in_flight += 1
        admitted = self._at(now if in_flight_from is None else max(now, in_flight_from))
        admitted["in_flight"] = max(admitted["in_flight"], self._in_flight)

    def finish(self, now: float) -> None:
        self._at(now)
        self._in_flight = max(0, self._in_flight - 1)

    def reject(self, now: float) -> None:
        self._at(now)["rejected"] += 1

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Every second from 0 to the last event, or to now while requests are in flight."""
        if self._origin is None:
            return []
        if self._in_flight:
            self._at(now)
        return [dict(second) for second in self._seconds]
