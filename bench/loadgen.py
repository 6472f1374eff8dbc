"""The load generator: worker processes, each one uvloop event loop with many WebSocket clients.

A client is a small asyncio Protocol speaking RFC 6455 directly (handshake, masked text
frames out, unmasked frames in, ping → pong, close). It parses each server frame with orjson
and does the bookkeeping of the benchmark, nothing else: a receive costs a few microseconds,
so the generator is not what saturates (its CPU is measured and reported beside the
server's). `--client websockets` swaps in the `websockets` library's client for comparison.

Message content is `B|<send time.time_ns()>|<sender instance>|<padding>`: a receiver computes
send → receive latency on the same clock, and, in the cluster scenario, whether the sender
was connected to the same instance.

The orchestrator (bench/run.py) drives workers over a multiprocessing Pipe with small
command dicts; see `Worker.cmd_*`.
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import os
import random
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Any

import orjson

from bench.procstat import raise_nofile

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
loads = orjson.loads
dumps = orjson.dumps


class ClosedError(ConnectionError):
    pass


class Requests:
    """What both client kinds share: a request is a frame whose reply carries its message_id."""

    waiters: dict[str, asyncio.Future[dict[str, Any]]]

    def send_json(self, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def request(self, obj: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send a frame; the future resolves with the reply carrying its message_id."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[obj["message_id"]] = fut
        self.send_json(obj)
        return fut


class RawConn(Requests, asyncio.Protocol):
    """One client connection (raw RFC 6455 over an asyncio transport)."""

    def __init__(self, worker: Worker, spec: dict[str, Any]) -> None:
        self.w = worker
        self.user: str = spec["user"]
        self.groups: list[str] = spec.get("groups", [])
        self.inst: str = str(spec.get("inst", 0))
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.src: str | None = spec.get("src")
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.frag: bytearray | None = None
        self._key = base64.b64encode(os.urandom(16))
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # group_id -> [frames, max seq, duplicates, out of order, set of seqs]
        self.stats: dict[str, list[Any]] = {}
        self.notes: list[str] = []  # titles of the notifications received, in order
        self.close_code: int | None = None
        self.closing = False  # we started the close
        self.lost = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    async def open(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if self.src:
            kwargs["local_addr"] = (self.src, 0)
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: self, self.host, self.port, **kwargs)
            await self.handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport.write(  # type: ignore[union-attr]
            b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.host.encode(), self.port, self._key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.close_code is None:
            self.close_code = 1006
        if not self.handshake.done():
            self.handshake.set_exception(ClosedError("closed during the handshake"))
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(ClosedError(f"closed ({self.close_code})"))
        self.waiters.clear()
        if not self.closing:
            self.w.unexpected_closes[self.close_code] += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            accept = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest())
            if not head.startswith(b"HTTP/1.1 101") or accept not in head:
                status = head.split(b"\r\n", 1)[0].decode("latin-1")
                self.handshake.set_exception(ClosedError(f"handshake refused: {status}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.handshake.set_result(None)
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head_len = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head_len = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head_len = 10
            if b1 & 0x80:  # a server must not mask
                self.w.protocol_errors += 1
                head_len += 4
            end = pos + head_len + length
            if end > n:
                break
            payload = bytes(buf[pos + head_len : end])
            pos = end
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 2 or opcode == 0:
                if not b0 & 0x80:  # fragment
                    if self.frag is None:
                        self.frag = bytearray()
                    self.frag += payload
                    continue
                if self.frag is not None:
                    payload = bytes(self.frag + payload)
                    self.frag = None
                if opcode == 2:
                    self.w.protocol_errors += 1
                    continue
                self.w.on_text(self, payload)
            elif opcode == 9:
                self.send_frame(0xA, payload)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closing:
                    self.send_frame(0x8, payload[:2])
                    self.w.unexpected_closes[self.close_code] += 1
                    self.closing = True
                assert self.transport is not None
                self.transport.close()
                break
        if pos:
            del buf[:pos]

    # -- sending ---------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClosedError("not connected")
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
        key = os.urandom(4)
        if n:
            mask = (key * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(
                n, "big"
            )
        transport.write(head + key + payload)

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send_frame(0x1, dumps(obj))

    def close(self, code: int = 1000) -> None:
        if self.closing or self.lost:
            return
        self.closing = True
        try:
            self.send_frame(0x8, code.to_bytes(2, "big"))
        except ClosedError:
            pass
        if self.transport is not None:
            self.transport.close()


class LibConn(Requests):
    """Same duties as RawConn on the `websockets` library's asyncio client (for comparison)."""

    def __init__(self, worker: Worker, spec: dict[str, Any]) -> None:
        self.w = worker
        self.user = spec["user"]
        self.groups = spec.get("groups", [])
        self.inst = str(spec.get("inst", 0))
        self.host, self.port, self.src = spec["host"], spec["port"], spec.get("src")
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.stats: dict[str, list[Any]] = {}
        self.notes: list[str] = []
        self.close_code: int | None = None
        self.closing = False
        self.lost = False
        self.ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, timeout: float) -> None:
        from websockets.asyncio.client import connect

        kwargs: dict[str, Any] = {}
        if self.src:
            kwargs["local_addr"] = (self.src, 0)
        self.ws = await connect(
            f"ws://{self.host}:{self.port}/ws",
            open_timeout=timeout,
            ping_interval=None,
            compression=None,
            max_size=None,
            max_queue=None,
            **kwargs,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.w.on_text(self, message)
        except Exception:
            pass
        finally:
            self.lost = True
            self.close_code = getattr(self.ws, "close_code", None) or 1006
            for fut in self.waiters.values():
                if not fut.done():
                    fut.set_exception(ClosedError(f"closed ({self.close_code})"))
            self.waiters.clear()
            if not self.closing:
                self.w.unexpected_closes[self.close_code] += 1

    def send_json(self, obj: dict[str, Any]) -> None:
        asyncio.ensure_future(self.ws.send(dumps(obj).decode()))

    def close(self, code: int = 1000) -> None:
        if self.closing or self.lost:
            return
        self.closing = True
        asyncio.ensure_future(self.ws.close(code))


def _ack_time(fut: asyncio.Future[Any], sent: int, out: array.array[int]) -> None:
    if not fut.cancelled() and fut.exception() is None and fut.result()["type"] == "ack":
        out.append(time.time_ns() - sent)
        out_last[0] = max(out_last[0], time.time_ns())


out_last = [0]  # time of the latest ack seen by cmd_send_rate (one send phase at a time)


def percentiles(samples: list[float] | array.array[Any], points: list[float]) -> list[float]:
    """Nearest-rank percentiles of unsorted samples."""
    data = sorted(samples)
    if not data:
        return [float("nan")] * len(points)
    last = len(data) - 1
    return [data[min(last, max(0, round(p / 100 * last)))] for p in points]


class Worker:
    def __init__(self, pipe: Any, wid: int, client: str) -> None:
        self.pipe = pipe
        self.wid = wid
        self.client = client
        self.conns: list[Any] = []
        self.exit = asyncio.Event()
        self.reset()

    def reset(self) -> None:
        self.lat_local = array.array("q")
        self.lat_remote = array.array("q")
        self.received = 0
        self.first_recv_ns = 0
        self.last_recv_ns = 0
        self.unparsed = 0
        self.protocol_errors = 0
        self.errors: Counter[str] = Counter()
        self.unexpected_closes: Counter[int] = Counter()
        # Read marks (the `marks` scenario): every received message marked read at once.
        self.marking = False
        self.marks_sent = 0
        self.mark_pending: dict[str, tuple[int, Any, str]] = {}  # id -> (sent ns, conn, group)
        self.mark_lat = array.array("q")
        self.mark_best: dict[tuple[str, str], int] = {}  # (user, group) -> highest acked mark
        self.mark_refused: Counter[str] = Counter()
        self.read_updates = 0
        # Notifications (the `notify` scenario): per connection, the titles received.
        self.notes_received = 0
        self.lat_notes = array.array("q")

    # -- the receive path (hot) --------------------------------------------------------------

    def on_text(self, conn: Any, payload: bytes | str) -> None:
        try:
            frame = loads(payload)
            kind = frame["type"]
        except Exception:
            self.unparsed += 1
            return
        if kind == "new_message":
            now = time.time_ns()
            data = frame["data"]
            group = data["group_id"]
            seq = data["seq"]
            st = conn.stats.get(group)
            if st is None:
                st = conn.stats[group] = [0, 0, 0, 0, set()]
            st[0] += 1
            seen = st[4]
            if seq in seen:
                st[2] += 1
            else:
                seen.add(seq)
                if seq < st[1]:
                    st[3] += 1
                else:
                    st[1] = seq
            content = data.get("content") or ""
            if content.startswith("B|"):
                parts = content.split("|", 3)
                lat = now - int(parts[1])
                if parts[2] == conn.inst:
                    self.lat_local.append(lat)
                else:
                    self.lat_remote.append(lat)
            self.received += 1
            if not self.first_recv_ns:
                self.first_recv_ns = now
            self.last_recv_ns = now
            if self.marking:
                self._mark(conn, group, seq)
            return
        mid = frame.get("message_id")
        if mid is not None and mid in self.mark_pending:
            self._marked(mid, frame)
            return
        if kind == "read_update":
            self.read_updates += 1
            return
        if kind == "notification":
            self._notified(conn, frame["data"])
            return
        if kind == "error" or kind == "auth_failed":
            d = frame.get("data") or {}
            self.errors[f"{kind} {d.get('code')}: {str(d.get('message'))[:80]}"] += 1
        if mid is not None:
            fut = conn.waiters.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)

    def _notified(self, conn: Any, data: dict[str, Any]) -> None:
        now = time.time_ns()
        self.notes_received += 1
        conn.notes.append(data["title"])
        content = data.get("content") or ""
        if content.startswith("B|"):
            self.lat_notes.append(now - int(content.split("|", 2)[1]))
        self.last_recv_ns = now

    def _mark(self, conn: Any, group: str, seq: int) -> None:
        self.marks_sent += 1
        mid = f"m{self.marks_sent}"
        try:
            conn.send_json(
                {"type": "mark_read", "message_id": mid, "data": {"group_id": group, "seq": seq}}
            )
        except ClosedError:
            self.mark_refused["sender closed"] += 1
            return
        self.mark_pending[mid] = (time.time_ns(), conn, group)

    def _marked(self, mid: str, frame: dict[str, Any]) -> None:
        sent, conn, group = self.mark_pending.pop(mid)
        if frame["type"] != "ack":
            d = frame.get("data") or {}
            self.mark_refused[f"{frame['type']} {d.get('code')}"] += 1
            return
        self.mark_lat.append(time.time_ns() - sent)
        key = (conn.user, group)
        mark = frame["data"]["last_read_seq"]
        if mark > self.mark_best.get(key, 0):
            self.mark_best[key] = mark

    # -- command loop ------------------------------------------------------------------------

    async def main(self) -> None:
        # A blocking reader thread: the pipe must stay in blocking mode (an event loop's
        # add_reader would make it non-blocking and break reads of large messages).
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read_pipe, args=(loop,), daemon=True).start()
        self.pipe.send(
            {
                "id": 0,
                "ok": True,
                "result": {"pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0))},
            }
        )
        await self.exit.wait()

    def _read_pipe(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                msg = self.pipe.recv()
            except (EOFError, OSError):
                loop.call_soon_threadsafe(self.exit.set)
                return
            loop.call_soon_threadsafe(self._spawn, msg)
            if msg.get("cmd") == "exit":
                return

    def _spawn(self, msg: dict[str, Any]) -> None:
        asyncio.ensure_future(self._handle(msg))

    async def _handle(self, msg: dict[str, Any]) -> None:
        try:
            result = await getattr(self, "cmd_" + msg["cmd"])(**msg.get("args", {}))
            reply = {"id": msg["id"], "ok": True, "result": result}
        except Exception:
            reply = {"id": msg["id"], "ok": False, "error": traceback.format_exc()}
        try:
            self.pipe.send(reply)
        except (BrokenPipeError, OSError):
            self.exit.set()

    async def cmd_exit(self) -> None:
        self.exit.set()

    async def cmd_open(
        self,
        specs: list[dict[str, Any]],
        secret: str,
        join: bool,
        concurrency: int = 100,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Connect, authenticate (and for baselines join the groups) every spec'd client."""
        from app.security import encode_token

        tokens = [encode_token(s["user"], secret=secret, name=s["user"]) for s in specs]
        sem = asyncio.Semaphore(concurrency)
        failures: Counter[str] = Counter()
        opened: list[Any] = []
        cls = RawConn if self.client == "raw" else LibConn

        async def one(spec: dict[str, Any], token: str) -> None:
            async with sem:
                conn = cls(self, spec)
                try:
                    await conn.open(timeout)
                    async with asyncio.timeout(timeout):
                        reply = await conn.request(
                            {"type": "auth", "message_id": "a", "data": {"token": token}}
                        )
                        if reply["type"] != "auth_success":
                            raise ClosedError(f"auth: {reply}")
                        if join:
                            for g in conn.groups:
                                reply = await conn.request(
                                    {
                                        "type": "join_group",
                                        "message_id": "j" + g,
                                        "data": {"group_id": g},
                                    }
                                )
                                if reply["type"] != "ack":
                                    raise ClosedError(f"join: {reply}")
                    opened.append(conn)
                except Exception as exc:
                    failures[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
                    conn.close()

        t0 = time.time_ns()
        await asyncio.gather(*(one(s, t) for s, t in zip(specs, tokens, strict=True)))
        t1 = time.time_ns()
        # Keep the order of `specs` so the orchestrator can address a client by index.
        by_user = {c.user: c for c in opened}
        self.conns = [by_user[s["user"]] for s in specs if s["user"] in by_user]
        return {
            "opened": len(self.conns),
            "failed": sum(failures.values()),
            "failures": dict(failures.most_common(5)),
            "t_start_ns": t0,
            "t_end_ns": t1,
        }

    def _content(self, inst: str, pad: str) -> str:
        return f"B|{time.time_ns()}|{inst}|{pad}"

    async def cmd_send_closed(
        self, index: int, group: str, count: int, tag: str, pad: str, ack_timeout: float = 30.0
    ) -> dict[str, Any]:
        """One sender: next send_message right after the previous ack ("as fast as acks allow")."""
        conn = self.conns[index]
        acks: dict[str, list[int]] = {group: []}
        ack_lat = array.array("q")
        first = 0
        failures: Counter[str] = Counter()
        for k in range(count):
            now = time.time_ns()
            if not first:
                first = now
            frame = {
                "type": "send_message",
                "message_id": f"{tag}-{self.wid}-{k}",
                "data": {"group_id": group, "msg_type": 1, "content": f"B|{now}|{conn.inst}|{pad}"},
            }
            try:
                async with asyncio.timeout(ack_timeout):
                    reply = await conn.request(frame)
            except (TimeoutError, ClosedError) as exc:
                failures[type(exc).__name__] += 1
                if conn.lost:
                    break
                continue
            if reply["type"] == "ack":
                acks[group].append(reply["data"]["seq"])
                ack_lat.append(time.time_ns() - now)
            else:
                failures[str(reply.get("data"))[:100]] += 1
        return {
            "acks": acks,
            "first_send_ns": first,
            "last_ack_ns": time.time_ns(),
            "sent": count,
            "ack_lat_ns": ack_lat.tobytes(),
            "failures": dict(failures),
        }

    async def cmd_send_rate(
        self,
        t0_wall: float,
        rate: float,
        duration: float,
        n_workers: int,
        index: int,
        tag: str,
        pad: str,
        seed: int,
        senders: list[int] | None = None,
        ack_timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Open loop: global message i goes out at t0 + i/rate from this worker when
        i % n_workers == index, from a random local client into one of its groups."""
        loop = asyncio.get_running_loop()
        rnd = random.Random(seed)
        pool = [self.conns[i] for i in senders] if senders is not None else self.conns
        pool = [c for c in pool if c.groups]
        total = int(rate * duration)
        base = loop.time() + (t0_wall - time.time())
        pending: list[tuple[int, str, asyncio.Future[dict[str, Any]]]] = []
        lags = array.array("q")
        ack_lat = array.array("q")
        out_last[0] = 0
        first = 0
        failures: Counter[str] = Counter()
        for i in range(index, total, n_workers):
            at = base + i / rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(int((loop.time() - at) * 1e9))
            conn = rnd.choice(pool)
            if conn.lost:
                failures["sender closed"] += 1
                continue
            group = rnd.choice(conn.groups)
            now = time.time_ns()
            if not first:
                first = now
            frame = {
                "type": "send_message",
                "message_id": f"{tag}-{self.wid}-{i}",
                "data": {"group_id": group, "msg_type": 1, "content": f"B|{now}|{conn.inst}|{pad}"},
            }
            try:
                fut = conn.request(frame)
            except ClosedError:
                failures["sender closed"] += 1
                continue
            fut.add_done_callback(lambda f, sent=now: _ack_time(f, sent, ack_lat))
            pending.append((now, group, fut))
        last_send = time.time_ns()
        acks: dict[str, list[int]] = {}
        if pending:
            futs = [f for _, _, f in pending]
            await asyncio.wait(futs, timeout=ack_timeout)
        for _sent_at, group, fut in pending:
            if not fut.done():
                failures["ack timeout"] += 1
                fut.cancel()
                continue
            if fut.exception() is not None:
                failures[type(fut.exception()).__name__] += 1
                continue
            reply = fut.result()
            if reply["type"] == "ack":
                acks.setdefault(group, []).append(reply["data"]["seq"])
            else:
                failures[str(reply.get("data"))[:100]] += 1
        return {
            "acks": acks,
            "first_send_ns": first,
            "last_send_ns": last_send,
            "last_ack_ns": out_last[0],
            "sent": len(pending),
            "lag_ns": lags.tobytes(),
            "ack_lat_ns": ack_lat.tobytes(),
            "failures": dict(failures),
        }

    async def cmd_marking(self, on: bool) -> None:
        self.marking = on

    async def cmd_notes_finish(self, titles: list[str]) -> dict[str, Any]:
        """Per connection: notifications of `titles` never received, received twice, or out
        of the order they were pushed in; latencies push → delivery."""
        order = {t: i for i, t in enumerate(titles)}
        lost = dup = ooo = 0
        for conn in self.conns:
            got = [order[t] for t in conn.notes if t in order]
            lost += len(titles) - len(set(got))
            dup += len(got) - len(set(got))
            ooo += sum(1 for a, b in zip(got, got[1:], strict=False) if b < a)
        return {
            "received": self.notes_received,
            "lost": lost,
            "duplicates": dup,
            "out_of_order": ooo,
            "lat_ns": self.lat_notes.tobytes(),
            "last_recv_ns": self.last_recv_ns,
            "errors": dict(self.errors),
            "unexpected_closes": {str(k): v for k, v in self.unexpected_closes.items()},
        }

    async def cmd_count(self) -> dict[str, Any]:
        return {
            "received": self.received + self.notes_received,
            "marks_pending": len(self.mark_pending),
            "last_recv_ns": self.last_recv_ns,
            "open": sum(1 for c in self.conns if not c.lost),
        }

    async def cmd_finish(
        self, expected: dict[str, list[int]], mark_sample: int = 0
    ) -> dict[str, Any]:
        """Per receiver and group: lost (acked seqs never received), duplicates, out of order."""
        exp_sets = {g: set(v) for g, v in expected.items()}
        lost = dup = ooo = unacked = frames = 0
        worst_lost = 0
        receivers_with_loss = 0
        for conn in self.conns:
            for g in conn.groups:
                exp = exp_sets.get(g)
                st = conn.stats.get(g)
                seen: set[int] = st[4] if st else set()
                if st:
                    frames += st[0]
                    dup += st[2]
                    ooo += st[3]
                if exp is None:
                    continue
                missing = len(exp - seen)
                unacked += len(seen - exp)
                lost += missing
                if missing:
                    receivers_with_loss += 1
                    worst_lost = max(worst_lost, missing)
            for g, st in conn.stats.items():
                if g not in conn.groups:
                    unacked += st[0]  # a frame of a group this client is not in
        result = {
            "frames": frames,
            "received": self.received,
            "lost": lost,
            "duplicates": dup,
            "out_of_order": ooo,
            "unacked_delivered": unacked,
            "receivers_with_loss": receivers_with_loss,
            "worst_receiver_lost": worst_lost,
            "first_recv_ns": self.first_recv_ns,
            "last_recv_ns": self.last_recv_ns,
            "lat_local_ns": self.lat_local.tobytes(),
            "lat_remote_ns": self.lat_remote.tobytes(),
            "errors": dict(self.errors),
            "unexpected_closes": {str(k): v for k, v in self.unexpected_closes.items()},
            "unparsed": self.unparsed,
            "protocol_errors": self.protocol_errors,
            "open_at_finish": sum(1 for c in self.conns if not c.lost),
        }
        if self.marking:
            # The marks of a sample of users, for the orchestrator to read back over REST.
            sample = {c.user for c in self.conns[:mark_sample]}
            result.update(
                {
                    "marks_sent": self.marks_sent,
                    "marks_acked": len(self.mark_lat),
                    "marks_unanswered": len(self.mark_pending),
                    "marks_refused": dict(self.mark_refused),
                    "mark_lat_ns": self.mark_lat.tobytes(),
                    "mark_best": [[u, g, m] for (u, g), m in self.mark_best.items() if u in sample],
                    "read_updates": self.read_updates,
                }
            )
        return result

    async def cmd_close(self, timeout: float = 10.0) -> dict[str, Any]:
        for conn in self.conns:
            conn.close(1000)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(c.lost for c in self.conns):
            await asyncio.sleep(0.05)
        still = sum(1 for c in self.conns if not c.lost)
        self.conns = []
        self.reset()
        return {"not_closed": still}

    async def cmd_rest(
        self,
        base_url: str,
        secret: str,
        users: list[str],
        concurrency: int,
        duration: float,
        t0_wall: float,
        path: str,
    ) -> dict[str, Any]:
        """`concurrency` keep-alive HTTP/1.1 connections GETting `path` until t0 + duration.

        A plain client on asyncio streams: httpx costs the generator ~2 ms of CPU a request,
        which made the generator, not the server, the limit of this scenario."""
        from app.security import encode_token

        host, _, port = base_url.removeprefix("http://").partition(":")
        tokens = [encode_token(u, secret=secret, name=u) for u in users]
        lat = array.array("q")
        statuses: Counter[int] = Counter()
        items: Counter[int] = Counter()
        delay = t0_wall - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        end = t0_wall + duration

        async def loop_one(k: int) -> None:
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {tokens[k % len(tokens)]}\r\n\r\n"
            ).encode()
            writer: asyncio.StreamWriter | None = None
            while time.time() < end:
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, int(port))
                    t = time.perf_counter_ns()
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head[9:12])
                    length = _content_length(head)
                    body = await reader.readexactly(length)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    statuses[-1] += 1
                    self.errors[type(exc).__name__] += 1
                    if writer is not None:
                        writer.close()
                    writer = None
                    continue
                lat.append(time.perf_counter_ns() - t)
                statuses[status] += 1
                if status == 200 and sum(items.values()) < 5:
                    items[len(orjson.loads(body).get("items", []))] += 1
            if writer is not None:
                writer.close()

        await asyncio.gather(*(loop_one(k) for k in range(concurrency)))
        return {
            "lat_ns": lat.tobytes(),
            "statuses": {str(k): v for k, v in statuses.items()},
            "items_per_page": {str(k): v for k, v in items.items()},
            "errors": dict(self.errors),
        }


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("response without Content-Length")


def worker_main(pipe: Any, wid: int, client: str = "raw", cpus: set[int] | None = None) -> None:
    """Entry point of a worker process (on `cpus` when given)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    raise_nofile()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        uvloop = None  # type: ignore[assignment]
    try:
        if uvloop is not None:
            uvloop.run(Worker(pipe, wid, client).main())
        else:  # pragma: no cover
            asyncio.run(Worker(pipe, wid, client).main())
    except KeyboardInterrupt:
        pass
    sys.exit(0)
