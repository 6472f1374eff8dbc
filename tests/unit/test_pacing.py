"""TurnPacer: a burst of callers goes through a bounded share per event-loop turn."""

from __future__ import annotations

import asyncio

from app.realtime.pacing import TurnPacer


class Turns:
    """Counts the loop's turns: a callback that re-schedules itself runs once per turn."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def test_a_burst_passes_a_bounded_share_per_turn_in_arrival_order() -> None:
    pacer = TurnPacer(per_turn=8)
    turns = Turns()
    passed: list[tuple[int, int]] = []  # (caller, turn it went through)

    async def caller(n: int) -> None:
        await pacer.turn()
        passed.append((n, turns.count))

    await asyncio.gather(*(caller(n) for n in range(50)))
    turns.stop()
    assert [n for n, _ in passed] == list(range(50))
    per_turn: dict[int, int] = {}
    for _, turn in passed:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    assert max(per_turn.values()) <= 8, per_turn
    assert len(per_turn) >= 50 // 8, per_turn  # spread over turns, not all in one
    assert len(pacer) == 0


async def test_a_lone_caller_passes_at_once_and_a_cancelled_one_takes_no_share() -> None:
    pacer = TurnPacer(per_turn=2)
    await pacer.turn()  # nothing queued: no wait
    await pacer.turn()
    callers = [asyncio.ensure_future(pacer.turn()) for _ in range(5)]
    await asyncio.sleep(0)  # they start in one turn: two pass, three wait
    assert [c.done() for c in callers] == [True, True, False, False, False]
    callers[2].cancel()
    await asyncio.wait_for(asyncio.gather(*callers[3:]), 1)
    assert callers[2].cancelled()
    assert len(pacer) == 0
