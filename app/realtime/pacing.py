"""Spread bursts of event-loop work over several turns of the loop."""

from __future__ import annotations

import asyncio
from collections import deque


class TurnPacer:
    """Lets at most `per_turn` callers of `turn()` through per event-loop turn; the rest wait,
    in arrival order, for the following turns.

    The loop runs every callback that is ready in one turn before it looks at its sockets
    again. When thousands of clients leave at once (an access point restarting, a proxy
    reload), thousands of connection readers wake in the same turn (10,000 leaving: turns
    of up to 0.8 s, half of it these clean-ups), and no frame goes to anyone else
    meanwhile. Paced, each turn does a bounded share of them, and the loop serves its
    sockets (and every other connection) between the shares.
    """

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self._passed = 0  # callers let through in this turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._next_turn: asyncio.Handle | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    async def turn(self) -> None:
        """Return now when this turn's share is not used up, else in a later turn."""
        if self._passed < self.per_turn and not self._waiting:
            self._passed += 1
            self._schedule()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._schedule()
        await waiter

    def _schedule(self) -> None:
        if self._next_turn is None:
            # call_soon from here runs after this turn's ready callbacks, next turn.
            self._next_turn = asyncio.get_running_loop().call_soon(self._new_turn)

    def _new_turn(self) -> None:
        self._next_turn = None
        self._passed = 0
        waiting = self._waiting
        while waiting and self._passed < self.per_turn:
            waiter = waiting.popleft()
            if not waiter.done():  # a cancelled caller takes no share
                waiter.set_result(None)
                self._passed += 1
        if waiting or self._passed:
            self._schedule()
