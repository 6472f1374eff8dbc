"""The cycle-collector policy of a serving process (app/gc_policy.py).

These tests change the interpreter's collector state; each one puts it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Iterator

import pytest

from app import gc_policy
from app.gc_policy import GcPolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()


@pytest.fixture
def policy(clock: Clock) -> Iterator[GcPolicy]:
    """An installed policy; automatic collections are off meanwhile, so only the tests'
    own `gc.collect()` calls make full passes."""
    enabled = gc.isenabled()
    gc.disable()
    p = GcPolicy(60.0, clock=clock)
    p.install()
    try:
        yield p
    finally:
        p.uninstall()
        gc.unfreeze()
        gc.collect()
        if enabled:
            gc.enable()


def garbage_cycle() -> weakref.ref[Node]:
    """A two-object cycle that nothing else references; its weak reference dies only when
    the cycle collector reclaims it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def walked_by_collector(obj: object) -> bool:
    """In one of the three generations, i.e. not frozen."""
    return any(o is obj for gen in range(3) for o in gc.get_objects(gen))


def test_install_freezes_the_heap_and_listens(policy: GcPolicy) -> None:
    assert gc.get_freeze_count() > 0
    assert policy._on_gc in gc.callbacks
    policy.uninstall()
    assert policy._on_gc not in gc.callbacks


def test_survivors_of_a_full_pass_are_frozen(policy: GcPolicy) -> None:
    before = gc.get_freeze_count()
    kept = [Node() for _ in range(1000)]
    assert walked_by_collector(kept[0])
    gc.collect()
    assert policy.full_passes == 1
    assert not walked_by_collector(kept[0])  # frozen: the next pass does not walk it
    assert gc.get_freeze_count() >= before + len(kept)


def test_short_lived_cycles_are_still_collected(policy: GcPolicy) -> None:
    ref = garbage_cycle()
    assert ref() is not None
    gc.collect()
    assert ref() is None


def test_a_cycle_among_frozen_objects_waits_for_the_thaw(policy: GcPolicy, clock: Clock) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    gc.collect()  # the cycle is alive: it survives and is frozen
    del a, b
    gc.collect()
    assert ref() is not None  # frozen garbage: not walked
    clock.now += 59
    gc.collect()
    assert ref() is not None
    assert gc.get_freeze_count() > 0

    clock.now += 1  # full_interval reached: this pass thaws, the next walks everything
    gc.collect()
    assert policy.thawed
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None
    assert not policy.thawed
    assert gc.get_freeze_count() > 0  # frozen again after the walk over everything


def test_a_small_pass_freezes_what_came_since_the_last(policy: GcPolicy) -> None:
    gc.collect()
    assert policy.full_passes == 1
    kept = [Node() for _ in range(1000)]
    gc.collect(1)  # the young generations promote them
    assert walked_by_collector(kept[0])
    policy.small_pass()
    assert policy.full_passes == 2
    assert not walked_by_collector(kept[0])  # frozen after the small pass


def test_a_small_pass_walks_what_came_while_old_objects_died_as_fast(policy: GcPolicy) -> None:
    """The young counts are allocations minus deallocations: old objects dying as new ones
    come keep them at zero while the young generation fills up."""
    old = [Node() for _ in range(5000)]
    gc.collect()  # the old ones are frozen
    young = []
    for _ in range(5000):
        old.pop()
        young.append(Node())
    assert gc.get_count()[0] < 700 and gc.get_count()[1:] == (0, 0)  # no collection due
    assert walked_by_collector(young[0])
    policy.small_pass()
    assert not any(walked_by_collector(n) for n in young[::500])


async def test_run_makes_small_passes_while_the_collector_is_enabled(policy: GcPolicy) -> None:
    gc.collect()
    passes = asyncio.create_task(policy.run(every=0.01))
    try:
        kept = [Node() for _ in range(100)]
        gc.collect(1)
        for _ in range(50):  # the fixture disabled the collector: no pass while it is off
            await asyncio.sleep(0.01)
        assert policy.full_passes == 1 and walked_by_collector(kept[0])
        gc.enable()
        async with asyncio.timeout(5):
            while policy.full_passes == 1:
                await asyncio.sleep(0.01)
        gc.disable()
        assert not walked_by_collector(kept[0])
    finally:
        gc.disable()
        passes.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await passes


def test_zero_interval_keeps_the_interpreters_collector() -> None:
    count = len(gc.callbacks)
    try:
        assert gc_policy.install(0) is None
        assert len(gc.callbacks) == count
        assert gc.get_freeze_count() > 0  # the startup heap is still frozen once
        kept = Node()
        gc.collect()
        assert walked_by_collector(kept)  # survivors are not frozen
    finally:
        gc.unfreeze()


def test_install_returns_a_listening_policy() -> None:
    policy = gc_policy.install(3600)
    try:
        assert policy is not None
        assert policy._on_gc in gc.callbacks
        assert policy.full_interval == 3600
    finally:
        assert policy is not None
        policy.uninstall()
        gc.unfreeze()
