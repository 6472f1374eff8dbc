"""The orchestrator's side of the load-generator workers (bench/loadgen.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import threading
from typing import Any

from bench.loadgen import worker_main


class WorkerError(RuntimeError):
    pass


class WorkerPool:
    """N worker processes (spawned, so each has a fresh interpreter and its own uvloop)."""

    def __init__(self, n: int, client: str = "raw", cpus: set[int] | None = None) -> None:
        self.n = n
        self.client = client
        self.cpus = cpus  # `--pin`: the workers run on these CPUs
        self.worker_cpus: list[int] = []
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        self.pids: list[int] = []
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._stopping = False

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        ready = []
        for wid in range(self.n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(child, wid, self.client, self.cpus),
                name=f"bench-worker-{wid}",
            )
            proc.daemon = True
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)
            fut: asyncio.Future[Any] = loop.create_future()
            self._futures[-(wid + 1)] = fut
            ready.append(fut)
            threading.Thread(target=self._read, args=(loop, wid, parent), daemon=True).start()
        async with asyncio.timeout(60):
            hello = await asyncio.gather(*ready)
        self.pids = [h["pid"] for h in hello]
        self.worker_cpus = sorted({c for h in hello for c in h["cpus"]})  # as the workers see it

    def _read(self, loop: asyncio.AbstractEventLoop, wid: int, pipe: Any) -> None:
        """Blocking reader thread per worker (large replies need a blocking pipe)."""
        while True:
            try:
                msg = pipe.recv()
            except (EOFError, OSError):
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._died, wid)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, wid, msg)

    def _deliver(self, wid: int, msg: dict[str, Any]) -> None:
        key = -(wid + 1) if msg["id"] == 0 else msg["id"]
        fut = self._futures.pop(key, None)
        if fut is None or fut.done():
            return
        if msg["ok"]:
            fut.set_result(msg["result"])
        else:
            fut.set_exception(WorkerError(f"worker {wid}: {msg['error']}"))

    def _died(self, wid: int) -> None:
        if self._stopping:
            return
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(WorkerError(f"worker {wid} died"))

    async def call(self, wid: int, cmd: str, _timeout: float = 600, **args: Any) -> Any:
        mid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[mid] = fut
        self.pipes[wid].send({"id": mid, "cmd": cmd, "args": args})
        async with asyncio.timeout(_timeout):
            return await fut

    async def all(self, cmd: str, _timeout: float = 600, **args: Any) -> list[Any]:
        return list(
            await asyncio.gather(*(self.call(w, cmd, _timeout, **args) for w in range(self.n)))
        )

    async def each(
        self, cmd: str, per_worker: list[dict[str, Any]], _timeout: float = 600
    ) -> list[Any]:
        return list(
            await asyncio.gather(
                *(self.call(w, cmd, _timeout, **per_worker[w]) for w in range(self.n))
            )
        )

    async def stop(self) -> None:
        self._stopping = True
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send({"id": -1, "cmd": "exit", "args": {}})
        for proc in self.procs:
            await asyncio.to_thread(proc.join, 5)
            if proc.is_alive():
                proc.terminate()
                await asyncio.to_thread(proc.join, 5)
        self.pipes, self.procs = [], []
