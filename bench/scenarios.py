"""Scenarios: each run is bounded in count and time and sends traffic only to 127.0.0.x.

A message scenario (fanout, rate, groups, cluster) builds groups, connects one client per
user, sends, waits until every expected delivery arrived (or no progress for a while),
then asks every worker to check each receiver against the acked seqs: lost, duplicated and
out-of-order deliveries are counted per receiver and group.
"""

from __future__ import annotations

import array
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.pool import WorkerPool
from bench.procstat import CpuWindow, rss_bytes
from bench.targets import Environment, Server, is_service

ROOT_DIR = Path(__file__).resolve().parents[1]
QUANTILES = [i / 2 for i in range(0, 201)] + [99.9, 99.99]  # CDF points, percent


@dataclass
class Ctx:
    env: Environment
    pool: WorkerPool
    secret: str
    pad: str
    open_concurrency: int = 100
    drain_quiet: float = 3.0
    drain_cap: float = 180.0
    profile_dir: Path | None = None
    run_tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])


class Profiler:
    """py-spy record (raw collapsed stacks, non-blocking) of a server over a measured window;
    `top()` gives the hottest frames (self and inclusive share of samples)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        exe = Path(sys.executable).with_name("py-spy")
        return str(exe) if exe.exists() else shutil.which("py-spy")

    def start(self) -> None:
        exe = self.available()
        if exe is None:
            return
        cmd = [exe, "record", "--pid", str(self.pid), "--rate", "200", "--format", "raw"]
        # Non-blocking sampling leaves the server undisturbed but loses part of the stacks
        # (see "roots" in the summary); BENCH_PYSPY_BLOCKING=1 trades that for whole stacks.
        if os.environ.get("BENCH_PYSPY_BLOCKING") != "1":
            cmd.append("--nonblocking")
        cmd += ["-o", str(self.out)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        self.proc.send_signal(signal.SIGINT)
        for _ in range(200):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            self.proc.kill()
        return collapse_top(self.out)


def collapse_top(path: Path, n: int = 25) -> dict[str, Any]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    roots: Counter[str] = Counter()  # threads / idle samples show up here
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [f.replace(str(ROOT_DIR) + "/", "") for f in stack.split(";")]
        own[frames[-1]] += k
        roots[frames[0]] += k
        for f in set(frames):
            incl[f] += k
    if not total:
        return {}
    return {
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(n)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(n * 2)],
        "roots": [(f, round(100 * c / total, 1)) for f, c in roots.most_common(5)],
    }


@dataclass
class Topology:
    users: list[str]
    groups: dict[str, list[int]]  # local name -> member indices into users
    inst_of: list[int] | None = None  # instance index per user (cluster)


# -- helpers ---------------------------------------------------------------------------------


def pct(samples: list[int], points: list[float]) -> list[float]:
    if not samples:
        return [float("nan")] * len(points)
    last = len(samples) - 1
    return [samples[min(last, max(0, round(p / 100 * last)))] for p in points]


def summed(parts: list[dict[str, Any]], key: str) -> dict[str, int]:
    """The counts under `key` of every worker's answer, added up."""
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part[key])
    return dict(total)


def lat_summary(samples_ns: list[int], prefix: str = "lat") -> dict[str, float]:
    """Percentiles in milliseconds of sorted nanosecond samples."""
    if not samples_ns:
        return {}
    p50, p90, p99, p999 = pct(samples_ns, [50, 90, 99, 99.9])
    return {
        f"{prefix}_p50_ms": p50 / 1e6,
        f"{prefix}_p90_ms": p90 / 1e6,
        f"{prefix}_p99_ms": p99 / 1e6,
        f"{prefix}_p999_ms": p999 / 1e6,
        f"{prefix}_max_ms": samples_ns[-1] / 1e6,
        f"{prefix}_mean_ms": sum(samples_ns) / len(samples_ns) / 1e6,
        f"{prefix}_samples": len(samples_ns),
    }


def cdf(samples_ns: list[int]) -> list[float]:
    return [round(v / 1e6, 4) for v in pct(samples_ns, QUANTILES)] if samples_ns else []


def unpack(blobs: list[bytes]) -> list[int]:
    out = array.array("q")
    for blob in blobs:
        out.frombytes(blob)
    return sorted(out)


LOG_ISSUE = re.compile(r"\b(ERROR|CRITICAL|Traceback|WARNING|Exception)\b|\(1013\)|overflow")


def log_issues(servers: list[Server], offsets: list[int]) -> dict[str, Any]:
    lines: list[str] = []
    for server, offset in zip(servers, offsets, strict=True):
        for line in server.log_tail_since(offset).splitlines():
            if LOG_ISSUE.search(line):
                lines.append(line[:300])
    return {"log_issue_lines": len(lines), "log_issue_sample": lines[:8]}


def cpu_pids(servers: list[Server], pool: WorkerPool) -> dict[str, int]:
    pids = {f"server{i}": s.pid for i, s in enumerate(servers)}
    pids.update({f"worker{i}": p for i, p in enumerate(pool.pids)})
    return pids


def _rounded(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def cpu_metrics(raw: dict[str, float | None], n_servers: int, n_workers: int) -> dict[str, Any]:
    servers = [raw.get(f"server{i}") or 0.0 for i in range(n_servers)]
    kernel = sum(raw.get(f"server{i}_kernel") or 0.0 for i in range(n_servers))
    workers = [raw.get(f"worker{i}") or 0.0 for i in range(n_workers)]
    return {
        "server_cpu_pct": round(sum(servers), 1),
        # The servers' system time as a share of their CPU: on loopback a send also runs
        # the receiving side's TCP input and wakes the reader, on the sender's CPU.
        "server_kernel_share_pct": round(100 * kernel / sum(servers), 1) if sum(servers) else None,
        "server_cpu_pct_each": [round(x, 1) for x in servers],
        "generator_cpu_pct": round(sum(workers), 1),
        "generator_cpu_pct_max_worker": round(max(workers), 1) if workers else 0.0,
        "machine_busy_pct": round(raw.get("machine_busy_pct") or 0.0, 1),
        "postgres_redis_cpu_pct": round(raw.get("postgres_redis_pct") or 0.0, 1),
        "io_pressure_pct": _rounded(raw.get("io_pressure_pct")),
        "cpu_pressure_pct": _rounded(raw.get("cpu_pressure_pct")),
        "window_s": raw.get("wall_s"),
    }


async def rest_json(
    client: Any, method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> Any:
    for attempt in range(5):
        r = await client.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        if r.status_code in (200, 201):
            return r.json()
        if r.status_code in (429, 503) and attempt < 4:
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:300]}")


async def setup_groups(
    ctx: Ctx, target: str, server: Server | None, topo: Topology, tag: str
) -> dict[str, str]:
    """Create the groups: over REST on the service, just ids on a baseline."""
    if not is_service(target):
        return {name: f"g-{tag}-{name}" for name in topo.groups}
    import httpx

    from app.security import encode_token

    assert server is not None
    base = f"http://127.0.0.1:{server.port}/api/v1"
    sem = asyncio.Semaphore(16)
    ids: dict[str, str] = {}
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def create(name: str, members: list[int]) -> None:
            owner = topo.users[members[0]]
            token = encode_token(owner, secret=ctx.secret, name=owner)
            others = [topo.users[i] for i in members[1:]]
            async with sem:
                made = await rest_json(
                    client,
                    "POST",
                    f"{base}/groups",
                    token,
                    {"name": f"bench {name}", "member_ids": others[:999]},
                )
            gid = made["group_id"]
            ids[name] = gid

            async def add(user: str) -> None:
                async with sem:
                    await rest_json(
                        client, "POST", f"{base}/groups/{gid}/members", token, {"user_id": user}
                    )

            await asyncio.gather(*(add(u) for u in others[999:]))

        await asyncio.gather(*(create(n, m) for n, m in topo.groups.items()))
    return ids


def specs_for(
    topo: Topology, gids: dict[str, str], servers: list[Server], n_workers: int
) -> list[list[dict[str, Any]]]:
    """Client specs per worker; user j goes to worker j % n (local index j // n)."""
    groups_of: list[list[str]] = [[] for _ in topo.users]
    for name, members in topo.groups.items():
        for i in members:
            groups_of[i].append(gids[name])
    per: list[list[dict[str, Any]]] = [[] for _ in range(n_workers)]
    for j, user in enumerate(topo.users):
        inst = topo.inst_of[j] if topo.inst_of else 0
        per[j % n_workers].append(
            {
                "user": user,
                "groups": groups_of[j],
                "host": "127.0.0.1",
                "port": servers[inst].port,
                "inst": inst,
                # Spread source addresses so ephemeral ports never run short.
                "src": f"127.0.0.{2 + (j // n_workers) % 8}",
            }
        )
    return per


async def open_all(
    ctx: Ctx,
    per: list[list[dict[str, Any]]],
    join: bool,
    timeout: float = 60,
    *,
    every: bool = True,
) -> dict[str, Any]:
    """Connect and authenticate the clients `per` worker; with `every`, a client that failed
    fails the run (all are closed first)."""
    res = await ctx.pool.each(
        "open",
        [
            {
                "specs": specs,
                "secret": ctx.secret,
                "join": join,
                "concurrency": ctx.open_concurrency,
                "timeout": timeout,
            }
            for specs in per
        ],
        _timeout=timeout * 10,
    )
    opened = sum(r["opened"] for r in res)
    failed = sum(r["failed"] for r in res)
    t0 = min(r["t_start_ns"] for r in res)
    t1 = max(r["t_end_ns"] for r in res)
    failures = summed(res, "failures")
    if every and failed:
        await ctx.pool.all("close", _timeout=60)
        raise RuntimeError(f"{failed} clients failed: {failures}")
    return {
        "opened": opened,
        "open_failed": failed,
        "open_failures": failures,
        "open_s": (t1 - t0) / 1e9,
        "connects_per_s": opened / ((t1 - t0) / 1e9) if t1 > t0 else 0.0,
    }


async def drain(ctx: Ctx, expected_total: int) -> dict[str, Any]:
    """Wait until the workers saw `expected_total` new_message frames and every read mark
    they sent was answered, or no progress."""
    last_total, last_change = -1, time.monotonic()
    start = time.monotonic()
    total = 0
    while True:
        counts = await ctx.pool.all("count", _timeout=30)
        total = sum(c["received"] for c in counts)
        pending = sum(c["marks_pending"] for c in counts)
        now = time.monotonic()
        if total >= expected_total and not pending:
            break
        progress = total - pending
        if progress != last_total:
            last_total, last_change = progress, now
        elif now - last_change > ctx.drain_quiet or now - start > ctx.drain_cap:
            break
        await asyncio.sleep(0.05)
    return {"drain_s": time.monotonic() - start, "drained": total >= expected_total}


# -- message scenarios -----------------------------------------------------------------------


async def message_run(
    ctx: Ctx,
    target: str,
    servers: list[Server],
    topo: Topology,
    plan: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """One measured run; plan is {"kind": "closed", "count": M} or
    {"kind": "rate", "rate": R, "duration": D}."""
    pool = ctx.pool
    tag = f"{ctx.run_tag}{uuid.uuid4().hex[:6]}"
    offsets = [s.log_size() for s in servers]
    gids = await setup_groups(ctx, target, servers[0], topo, tag)
    per = specs_for(topo, gids, servers, pool.n)
    opened = await open_all(ctx, per, join=not is_service(target))
    metrics: dict[str, Any] = {
        "connections": opened["opened"],
        "open_failed": opened["open_failed"],
    }
    if opened["open_failures"]:
        metrics["open_failures"] = opened["open_failures"]
    members_open: dict[str, int] = {}
    for name, members in topo.groups.items():
        members_open[gids[name]] = len(members)
    profiler = None
    if ctx.profile_dir is not None and is_service(target):
        profiler = Profiler(servers[0].pid, ctx.profile_dir / f"pyspy-{target}-{tag}.txt")
        profiler.start()
    marks = bool(plan.get("marks"))
    if marks:
        await pool.all("marking", on=True)
    window = CpuWindow(cpu_pids(servers, pool))
    window.start()
    if plan["kind"] == "closed":
        first_group = next(iter(topo.groups))
        sender = topo.groups[first_group][0]
        wid, index = sender % pool.n, sender // pool.n
        sends = [
            await pool.call(
                wid,
                "send_closed",
                index=index,
                group=gids[first_group],
                count=plan["count"],
                tag=tag,
                pad=ctx.pad,
                _timeout=plan["count"] * 30 + 60,
            )
        ]
    else:
        t0 = time.time() + 0.3
        sends = await pool.each(
            "send_rate",
            [
                {
                    "t0_wall": t0,
                    "rate": plan["rate"],
                    "duration": plan["duration"],
                    "n_workers": pool.n,
                    "index": w,
                    "tag": tag,
                    "pad": ctx.pad,
                    "seed": hash((tag, w)) & 0xFFFF,
                }
                for w in range(pool.n)
            ],
            _timeout=plan["duration"] + 120,
        )
    acked: dict[str, set[int]] = {}
    failures: dict[str, int] = {}
    for s in sends:
        for g, seqs in s["acks"].items():
            acked.setdefault(g, set()).update(seqs)
        for k, v in s["failures"].items():
            failures[k] = failures.get(k, 0) + v
    expected_total = sum(len(v) * members_open[g] for g, v in acked.items())
    drained = await drain(ctx, expected_total)
    cpu = cpu_metrics(window.stop(), len(servers), pool.n)
    profile = await profiler.stop() if profiler is not None else {}
    fins = await pool.all(
        "finish",
        expected={g: sorted(v) for g, v in acked.items()},
        mark_sample=MARK_SAMPLE if marks else 0,
    )
    await pool.all("close", _timeout=60)

    sent = sum(s["sent"] for s in sends)
    n_acked = sum(len(v) for v in acked.values())
    gaps = sum(max(v) - len(v) for v in acked.values() if v)
    first_send = min(s["first_send_ns"] for s in sends if s["first_send_ns"]) if sent else 0
    last_recv = max(f["last_recv_ns"] for f in fins)
    deliveries = sum(f["received"] for f in fins)
    lat_local = unpack([f["lat_local_ns"] for f in fins])
    lat_remote = unpack([f["lat_remote_ns"] for f in fins])
    lat_all = sorted(lat_local + lat_remote) if lat_remote else lat_local
    ack_lat = unpack([s["ack_lat_ns"] for s in sends])
    errors, closes = summed(fins, "errors"), summed(fins, "unexpected_closes")
    span = (last_recv - first_send) / 1e9 if last_recv and first_send else 0.0
    server_cpu_s = cpu["server_cpu_pct"] / 100 * (cpu["window_s"] or 0.0)
    metrics.update(
        {
            "sent": sent,
            "acked": n_acked,
            "seq_gaps_in_acks": gaps,
            "send_failures": failures,
            "expected_deliveries": expected_total,
            "deliveries": deliveries,
            "deliveries_per_s": deliveries / span if span > 0 else 0.0,
            "span_s": span,
            "server_cpu_s": server_cpu_s,
            "deliveries_per_server_cpu_s": deliveries / server_cpu_s if server_cpu_s else 0.0,
            "server_us_per_delivery": server_cpu_s / deliveries * 1e6 if deliveries else 0.0,
            "lost": sum(f["lost"] for f in fins),
            "duplicates": sum(f["duplicates"] for f in fins),
            "out_of_order": sum(f["out_of_order"] for f in fins),
            "unacked_delivered": sum(f["unacked_delivered"] for f in fins),
            "receivers_with_loss": sum(f["receivers_with_loss"] for f in fins),
            "unexpected_closes": closes,
            "server_errors": errors,
            "unparsed_frames": sum(f["unparsed"] for f in fins),
            "protocol_errors": sum(f["protocol_errors"] for f in fins),
            **drained,
            **cpu,
            **lat_summary(lat_all),
            **lat_summary(ack_lat, "ack"),
        }
    )
    if plan["kind"] == "rate":
        lags = unpack([s["lag_ns"] for s in sends])
        metrics["achieved_send_rate"] = sent / plan["duration"] if plan["duration"] else 0.0
        last_ack = max(s.get("last_ack_ns", 0) for s in sends)
        if last_ack > first_send:
            metrics["acked_per_s"] = n_acked / ((last_ack - first_send) / 1e9)
        if lags:
            metrics["send_lag_p99_ms"] = pct(lags, [99])[0] / 1e6
            metrics["send_lag_max_ms"] = lags[-1] / 1e6
    if marks:
        metrics.update(await mark_metrics(ctx, servers[0], fins, cpu["window_s"] or 0.0))
    cdfs = {"all": cdf(lat_all)}
    if lat_remote:
        metrics.update(lat_summary(lat_local, "local"))
        metrics.update(lat_summary(lat_remote, "remote"))
        cdfs["local"] = cdf(lat_local)
        cdfs["remote"] = cdf(lat_remote)
    metrics.update(log_issues(servers, offsets))
    if profile:
        metrics["profile"] = profile
    return metrics, cdfs


MARK_SAMPLE = 25  # users per generator process whose stored marks are read back over REST


async def mark_metrics(
    ctx: Ctx, server: Server, fins: list[dict[str, Any]], window_s: float
) -> dict[str, Any]:
    """Read marks: how many were answered and how fast, and whether the marks stored (read
    back over REST for a sample of users) are the highest each user was acked."""
    import httpx

    from app.security import encode_token

    best: dict[str, dict[str, int]] = {}
    for f in fins:
        for user, group, mark in f["mark_best"]:
            best.setdefault(user, {})[group] = mark
    mismatched = 0
    async with httpx.AsyncClient(timeout=30) as client:
        for user, marks in best.items():
            token = encode_token(user, secret=ctx.secret, name=user)
            page = await rest_json(
                client, "GET", f"http://127.0.0.1:{server.port}/api/v1/groups", token
            )
            stored = {g["group_id"]: g["last_read_seq"] for g in page["items"]}
            mismatched += sum(1 for g, m in marks.items() if stored.get(g) != m)
    refused = summed(fins, "marks_refused")
    acked = sum(f["marks_acked"] for f in fins)
    return {
        "marks_sent": sum(f["marks_sent"] for f in fins),
        "marks_acked": acked,
        "marks_acked_per_s": acked / window_s if window_s else 0.0,
        "marks_unanswered": sum(f["marks_unanswered"] for f in fins),
        "marks_refused": refused,
        "marks_checked": sum(len(m) for m in best.values()),
        "marks_mismatched": mismatched,
        "read_updates": sum(f["read_updates"] for f in fins),
        **lat_summary(unpack([f["mark_lat_ns"] for f in fins]), "mark"),
    }


def users(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{j}" for j in range(n)]


async def fanout(
    ctx: Ctx, target: str, servers: list[Server], members: int, messages: int
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    tag = uuid.uuid4().hex[:8]
    topo = Topology(users(f"f{tag}", members), {"g": list(range(members))})
    return await message_run(ctx, target, servers, topo, {"kind": "closed", "count": messages})


async def rate(
    ctx: Ctx, target: str, servers: list[Server], members: int, per_s: float, duration: float
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    tag = uuid.uuid4().hex[:8]
    topo = Topology(users(f"r{tag}", members), {"g": list(range(members))})
    plan = {"kind": "rate", "rate": per_s, "duration": duration}
    return await message_run(ctx, target, servers, topo, plan)


async def groups(
    ctx: Ctx,
    target: str,
    servers: list[Server],
    conns: int,
    size: int,
    per_s: float,
    duration: float,
    marks: bool = False,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Groups of `size`, messages at `per_s` from random senders into their own group; with
    `marks` (the `marks` scenario), every receiver marks each message read as it arrives (a
    chat open on screen): a read mark per delivery beside the sends."""
    tag = uuid.uuid4().hex[:8]
    n_groups = conns // size
    topo = Topology(
        users(f"{'k' if marks else 's'}{tag}", n_groups * size),
        {f"g{k}": list(range(k * size, (k + 1) * size)) for k in range(n_groups)},
    )
    plan = {"kind": "rate", "rate": per_s, "duration": duration, "marks": marks}
    return await message_run(ctx, target, servers, topo, plan)


async def marks(
    ctx: Ctx, target: str, servers: list[Server], **kwargs: Any
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    return await groups(ctx, target, servers, **kwargs, marks=True)


async def notify(
    ctx: Ctx, target: str, servers: list[Server], users_n: int, pushes: int
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """service targets only: `users_n` connected users; a service pushes `pushes`
    notifications, each to all of them, over REST (`POST /api/v1/notifications` with a
    service token), the next when the previous is answered."""
    import httpx

    from app.security import encode_token

    pool = ctx.pool
    server = servers[0]
    offsets = [s.log_size() for s in servers]
    tag = uuid.uuid4().hex[:8]
    names = users(f"n{tag}", users_n)
    opened = await open_all(ctx, specs_for(Topology(names, {}), {}, servers, pool.n), join=False)
    token = encode_token(f"bench-service-{tag}", secret=ctx.secret, role="service")
    titles = [f"{tag}-{k}" for k in range(pushes)]
    posted = array.array("q")
    profiler = None
    if ctx.profile_dir is not None:
        profiler = Profiler(server.pid, ctx.profile_dir / f"pyspy-{target}-notify-{tag}.txt")
        profiler.start()
    window = CpuWindow(cpu_pids(servers, pool))
    window.start()
    first = time.time_ns()
    async with httpx.AsyncClient(timeout=60) as client:
        for title in titles:
            sent = time.time_ns()
            await rest_json(
                client,
                "POST",
                f"http://127.0.0.1:{server.port}/api/v1/notifications",
                token,
                {"user_ids": names, "type": "bench", "title": title, "content": f"B|{sent}|x"},
            )
            posted.append(time.time_ns() - sent)
    drained = await drain(ctx, users_n * pushes)
    cpu = cpu_metrics(window.stop(), len(servers), pool.n)
    profile = await profiler.stop() if profiler is not None else {}
    fins = await pool.all("notes_finish", titles=titles)
    await pool.all("close", _timeout=60)
    deliveries = sum(f["received"] for f in fins)
    last = max(f["last_recv_ns"] for f in fins)
    span = (last - first) / 1e9 if last > first else 0.0
    server_cpu_s = cpu["server_cpu_pct"] / 100 * (cpu["window_s"] or 0.0)
    errors, closes = summed(fins, "errors"), summed(fins, "unexpected_closes")
    metrics: dict[str, Any] = {
        "connections": opened["opened"],
        "pushes": pushes,
        "expected_deliveries": users_n * pushes,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / span if span > 0 else 0.0,
        "server_us_per_delivery": server_cpu_s / deliveries * 1e6 if deliveries else 0.0,
        "lost": sum(f["lost"] for f in fins),
        "duplicates": sum(f["duplicates"] for f in fins),
        "out_of_order": sum(f["out_of_order"] for f in fins),
        "unexpected_closes": closes,
        "server_errors": errors,
        **drained,
        **cpu,
        **lat_summary(unpack([f["lat_ns"] for f in fins])),
        **lat_summary(sorted(posted), "push"),
        **log_issues(servers, offsets),
    }
    if profile:
        metrics["profile"] = profile
    return metrics, {"all": cdf(unpack([f["lat_ns"] for f in fins]))}


async def cluster(
    ctx: Ctx, target: str, servers: list[Server], members: int, per_s: float, duration: float
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Same group size and rate, first all members on instance 0, then members alternating
    between the two instances: latency of same-instance vs cross-instance receivers."""
    plan = {"kind": "rate", "rate": per_s, "duration": duration}
    tag = uuid.uuid4().hex[:8]
    single = Topology(users(f"c1{tag}", members), {"g": list(range(members))}, [0] * members)
    m1, c1 = await message_run(ctx, target, servers, single, plan)
    split = Topology(
        users(f"c2{tag}", members),
        {"g": list(range(members))},
        [j % 2 for j in range(members)],
    )
    m2, c2 = await message_run(ctx, target, servers, split, plan)
    metrics: dict[str, Any] = {}
    for key in ("lat_p50_ms", "lat_p90_ms", "lat_p99_ms", "lat_max_ms"):
        metrics["single_" + key] = m1.get(key)
    for key in list(m2):
        if key.startswith(("local_", "remote_")):
            metrics[key] = m2[key]
    for key in ("lost", "duplicates", "out_of_order", "unacked_delivered", "log_issue_lines"):
        metrics[key] = m1.get(key, 0) + m2.get(key, 0)
    for key in ("deliveries", "expected_deliveries", "sent", "acked"):
        metrics[key] = (m1.get(key, 0), m2.get(key, 0))
    for key in ("server_cpu_pct", "generator_cpu_pct", "generator_cpu_pct_max_worker"):
        metrics[key] = max(m1.get(key, 0), m2.get(key, 0))
    metrics["machine_busy_pct"] = max(m1["machine_busy_pct"], m2["machine_busy_pct"])
    for key in ("io_pressure_pct", "cpu_pressure_pct"):
        found = [v for v in (m1.get(key), m2.get(key)) if v is not None]
        metrics[key] = max(found) if found else None
    metrics["single"] = {k: v for k, v in m1.items() if not isinstance(v, dict | list)}
    metrics["split"] = {k: v for k, v in m2.items() if not isinstance(v, dict | list)}
    metrics["unexpected_closes"] = {**m1["unexpected_closes"], **m2["unexpected_closes"]}
    metrics["server_errors"] = {**m1["server_errors"], **m2["server_errors"]}
    metrics["log_issue_sample"] = m1["log_issue_sample"] + m2["log_issue_sample"]
    cdfs = {"single": c1["all"], "local": c2.get("local", []), "remote": c2.get("remote", [])}
    return metrics, cdfs


# -- idle ------------------------------------------------------------------------------------


async def idle(
    ctx: Ctx, target: str, servers: list[Server], conns: int, duration: float
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    server = servers[0]
    offsets = [s.log_size() for s in servers]
    await asyncio.sleep(1.0)
    rss0 = rss_bytes(server.pid) or 0
    tag = uuid.uuid4().hex[:8]
    topo = Topology(users(f"i{tag}", conns), {})
    per = specs_for(topo, {}, servers, ctx.pool.n)
    profiler = None
    if ctx.profile_dir is not None and is_service(target):
        profiler = Profiler(server.pid, ctx.profile_dir / f"pyspy-{target}-idle-{tag}.txt")
        profiler.start()
    connect_window = CpuWindow(cpu_pids(servers, ctx.pool))
    connect_window.start()
    opened = await open_all(ctx, per, join=False, timeout=120, every=False)
    connect_cpu = cpu_metrics(connect_window.stop(), len(servers), ctx.pool.n)
    profile = await profiler.stop() if profiler is not None else {}
    await asyncio.sleep(1.0)
    rss1 = rss_bytes(server.pid) or 0
    window = CpuWindow(cpu_pids(servers, ctx.pool))
    window.start()
    await asyncio.sleep(duration)
    cpu = cpu_metrics(window.stop(), len(servers), ctx.pool.n)
    rss2 = rss_bytes(server.pid) or 0
    fins = await ctx.pool.all("finish", expected={})
    await ctx.pool.all("close", timeout=60, _timeout=120)
    closes = summed(fins, "unexpected_closes")
    n = max(1, opened["opened"])
    metrics = {
        "connections": opened["opened"],
        "open_failed": opened["open_failed"],
        "open_failures": opened["open_failures"],
        "connects_per_s": opened["connects_per_s"],
        "open_s": opened["open_s"],
        "rss_before_mib": rss0 / 2**20,
        "rss_after_mib": rss1 / 2**20,
        "rss_end_mib": rss2 / 2**20,
        "rss_per_conn_kib": (rss1 - rss0) / n / 1024,
        "idle_cpu_pct": cpu["server_cpu_pct"],
        "connect_server_cpu_pct": connect_cpu["server_cpu_pct"],
        "connect_generator_cpu_pct": connect_cpu["generator_cpu_pct"],
        "server_cpu_ms_per_connect": connect_cpu["server_cpu_pct"]
        / 100
        * (connect_cpu["window_s"] or 0.0)
        / n
        * 1000,
        "open_at_end": sum(f["open_at_finish"] for f in fins),
        "unexpected_closes": closes,
        "lost": 0,
        "duplicates": 0,
        "out_of_order": 0,
        **cpu,
        **log_issues(servers, offsets),
    }
    if profile:
        metrics["profile"] = profile  # the connect + auth phase
    return metrics, {}


# -- rest ------------------------------------------------------------------------------------


async def rest(
    ctx: Ctx,
    target: str,
    servers: list[Server],
    readers: int,
    concurrency: int,
    messages: int,
    duration: float,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """GET /api/v1/messages/offline?limit=50 from `concurrency` keep-alive httpx clients."""
    import httpx

    from app.security import encode_token

    server = servers[0]
    offsets = [s.log_size() for s in servers]
    tag = uuid.uuid4().hex[:8]
    names = users(f"o{tag}", readers + 1)
    topo = Topology(names, {"g": list(range(readers + 1))})
    gids = await setup_groups(ctx, target, server, topo, tag)
    owner_token = encode_token(names[0], secret=ctx.secret, name=names[0])
    base = f"http://127.0.0.1:{server.port}/api/v1"
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=60) as client:

        async def post(k: int) -> None:
            async with sem:
                await rest_json(
                    client,
                    "POST",
                    f"{base}/groups/{gids['g']}/messages",
                    owner_token,
                    {"msg_type": 1, "content": f"offline {k} {ctx.pad}", "client_msg_id": f"o{k}"},
                )

        await asyncio.gather(*(post(k) for k in range(messages)))
    pool = ctx.pool
    per_users = [names[1:][w :: pool.n] for w in range(pool.n)]
    per_conc = [
        concurrency // pool.n + (1 if w < concurrency % pool.n else 0) for w in range(pool.n)
    ]
    window = CpuWindow(cpu_pids(servers, pool))
    profiler = None
    if ctx.profile_dir is not None:
        profiler = Profiler(server.pid, ctx.profile_dir / f"pyspy-{target}-rest-{tag}.txt")
        profiler.start()
    t0 = time.time() + 0.5
    window.start()
    res = await pool.each(
        "rest",
        [
            {
                "base_url": f"http://127.0.0.1:{server.port}",
                "secret": ctx.secret,
                "users": per_users[w],
                "concurrency": max(1, per_conc[w]),
                "duration": duration,
                "t0_wall": t0,
                "path": "/api/v1/messages/offline?limit=50",
            }
            for w in range(pool.n)
        ],
        _timeout=duration + 120,
    )
    cpu = cpu_metrics(window.stop(), len(servers), pool.n)
    profile = await profiler.stop() if profiler is not None else {}
    statuses, pages = summed(res, "statuses"), summed(res, "items_per_page")
    lat = unpack([r["lat_ns"] for r in res])
    ok = statuses.get("200", 0)
    metrics = {
        "requests": sum(statuses.values()),
        "ok": ok,
        "statuses": statuses,
        "items_per_page": pages,
        "req_per_s": ok / duration,
        # server CPU % x the window = CPU-seconds (the generator may be the limit of req/s)
        "server_cpu_ms_per_request": (
            10 * cpu["server_cpu_pct"] * (cpu["window_s"] or 0.0) / ok if ok else None
        ),
        "lost": 0,
        "duplicates": 0,
        "out_of_order": 0,
        "non_200": sum(v for k, v in statuses.items() if k != "200"),
        **cpu,
        **lat_summary(lat),
        **log_issues(servers, offsets),
    }
    if profile:
        metrics["profile"] = profile
    return metrics, {"all": cdf(lat)}
