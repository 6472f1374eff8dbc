"""Short pauses of the cycle collector on a large, long-lived heap.

CPython's (3.11–3.13) full, generation 2, collection walks every tracked object that is
not frozen. A server holding 10,000 connections keeps ~65 tracked objects per connection
alive, and each full pass then stalls the event loop for half a second (measured: 530 ms
with 650k objects), once for every quarter by which the long-lived heap has grown. Objects
that survived a full pass are, here, almost all as long-lived as their connection, so
after each full pass this policy freezes them (`gc.freeze()`): the next pass walks only
what is new since, and its pause scales with the growth, not with the number of
connections.

What it gives up: a reference cycle that was alive at a full pass and dies later is not
reclaimed while it is frozen. The one found per connection was uvicorn's plain-HTTP
protocol object, which a WebSocket upgrade left in a cycle with its parser (and, through it,
the socket's transport): a handshake in flight during a full pass left ~4 KB behind until
the next thaw. The service now breaks that cycle at the upgrade (app/api/upgrade.py), and a
connection that comes and goes leaves no cycle at all (tests/integration/test_http_upgrade.py).
Every `full_interval` seconds the frozen objects are still thawed and the next full pass walks
everything once, as CPython would do without this policy, for cycles made elsewhere (a
library's, an exception's). Plain reference counting frees everything else as usual.

CPython itself starts a full pass only once the objects promoted since the last one
outnumber a quarter of those it kept, frozen ones included: with 10,000 connections
arriving, passes of 70–117 ms, each walking the latest quarter at once. `run()` makes a
full pass every SMALL_PASS_EVERY seconds instead: each walks what arrived in that quarter
second, then it is frozen too (4–16 ms passes in the same storm on the machines measured).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

OLDEST = 2  # the generation whose collection is the full pass
SMALL_PASS_EVERY = 0.25  # seconds between the small full passes of `GcPolicy.run`


class GcPolicy:
    """Freeze the survivors of each full collection; thaw them every `full_interval` s."""

    def __init__(
        self, full_interval: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.full_interval = full_interval
        self.clock = clock
        self.last_thaw = clock()
        self.thawed = False
        self.full_passes = 0

    def install(self) -> None:
        """Freeze what exists now, then the survivors of every full pass from here on."""
        freeze_now()
        self.last_thaw = self.clock()
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def small_pass(self) -> None:
        """A full pass now. It walks only what is not frozen, i.e. what came since the last
        pass, and its survivors are frozen in turn.

        Not skipped when `gc.get_count()` shows nothing new: the counts are allocations minus
        deallocations, so while old, frozen objects die as fast as new ones come (each
        connection's keepalive timer replaced, or thousands of connections closing) they stay
        near zero and the young generation grows unwalked until one pass walks it all
        (measured with 10,000 connections: young passes over 83k-87k objects of 39-56 ms,
        then full passes of 94 and 196 ms). Nothing new costs a pass ~1 us."""
        gc.collect(OLDEST)

    async def run(self, every: float = SMALL_PASS_EVERY) -> None:
        """Small full passes every `every` seconds while the collector is enabled, for the
        life of the serving loop (cancel to stop)."""
        while True:
            await asyncio.sleep(every)
            if gc.isenabled():
                self.small_pass()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != OLDEST:
            return
        self.full_passes += 1
        if self.thawed:
            # This pass walked everything (cycles among old objects are gone): start over.
            self.thawed = False
        elif self.clock() - self.last_thaw >= self.full_interval:
            # Thawed objects join the oldest generation: the next full pass walks them all
            # once (and reclaims the cycles among them), then everything is frozen again.
            gc.unfreeze()
            self.thawed = True
            self.last_thaw = self.clock()
            return
        gc.freeze()


def freeze_now() -> None:
    """Collect, then freeze what is left (at start-up: the imported code and the built app,
    which live as long as the process)."""
    gc.collect()
    gc.freeze()


def install(full_interval: float) -> GcPolicy | None:
    """The policy for a serving process; `full_interval` <= 0 leaves CPython's default
    (one freeze of the startup heap only)."""
    if full_interval <= 0:
        freeze_now()
        return None
    policy = GcPolicy(full_interval)
    policy.install()
    return policy
