"""The simulator state's arrival order: tickets, settling, and the bounded wait for a turn."""

from __future__ import annotations

import asyncio

import pytest

from qbq.simulator import SimConfig, SimState
from qbq.simulator import state as state_module


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every poll `wait_turn` makes while it waits for its turn."""
    made: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float) -> None:
        made.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(state_module.asyncio, "sleep", counting_sleep)
    return made


def test_a_turn_comes_once_every_earlier_ticket_settled(polls: list[float]) -> None:
    sim = SimState(SimConfig(), [])
    first, second, third = sim.take_ticket(), sim.take_ticket(), sim.take_ticket()
    sim.settle(second)  # out of order: the first still holds the third up
    events: list[str] = []

    async def third_waits() -> None:
        await sim.wait_turn(third)
        events.append("third's turn")

    async def first_settles() -> None:
        await asyncio.sleep(0.05)
        events.append("first settled")
        sim.settle(first)

    async def main() -> None:
        await asyncio.gather(third_waits(), first_settles())

    asyncio.run(main())
    assert events == ["first settled", "third's turn"]
    sim.settle(first)  # settling twice changes nothing
    sim.settle(None)  # a batch line has no ticket
    sim.settle(third)
    polls.clear()
    asyncio.run(sim.wait_turn(sim.take_ticket()))
    assert polls == []  # every earlier ticket settled: no wait


def test_a_ticket_never_settled_holds_up_one_wait_only(monkeypatch: pytest.MonkeyPatch,
                                                      polls: list[float]) -> None:
    monkeypatch.setattr(state_module, "ARRIVAL_ORDER_WAIT_S", 0.1)
    sim = SimState(SimConfig(), [])
    lost = sim.take_ticket()  # its request never reached the handler
    waiting = sim.take_ticket()
    asyncio.run(sim.wait_turn(waiting))
    assert polls  # it waited (the bound), then went ahead
    sim.settle(waiting)
    polls.clear()
    later = sim.take_ticket()
    asyncio.run(sim.wait_turn(later))
    assert polls == []  # not held up by the lost ticket again
    sim.settle(lost)  # a late settle of an abandoned ticket is ignored
    sim.settle(later)
    asyncio.run(sim.wait_turn(sim.take_ticket()))
    assert polls == []
