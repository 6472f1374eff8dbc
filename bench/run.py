"""Benchmark CampusHub Realtime against two baselines; write JSON results and the docs.

    python bench/run.py --quick                      # `make bench`: < 3 minutes
    python bench/run.py --full                       # `make bench-full`
    python bench/run.py --full --scenarios fanout,rate --targets service-prod,websockets,fastapi
    python bench/run.py --full --pin --scenarios rate  # the server alone on the first CPU
    python bench/run.py --docs-from bench/results/20250101T000000.json   # re-render docs only

Targets: service-prod (Postgres + Redis Streams, one uvicorn worker), service-embedded
(SQLite + in-process bus), websockets (the `websockets` library's server + broadcast()),
fastapi (the FastAPI-docs ConnectionManager under uvicorn). Scenarios: fanout, rate, groups,
marks, notify, idle, cluster, rest. All traffic goes to 127.0.0.x; every run is bounded in
count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report, scenarios  # noqa: E402
from bench.pool import WorkerPool  # noqa: E402
from bench.procstat import (  # noqa: E402
    disk_sync_probe,
    machine_info,
    process_cpus,
    raise_nofile,
)
from bench.targets import (  # noqa: E402
    OPTIONAL_TARGETS,
    TARGETS,
    Environment,
    Server,
    app_revision,
    describe_command,
)

SCENARIOS = ("fanout", "rate", "groups", "marks", "notify", "idle", "cluster", "rest")
SECRET = "campushub-bench-secret-0123456789"

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "repeats": 1,
        "fanout": [(100, 50), (300, 50)],
        "rate_members": 200,
        "rates": [50.0, 5.0],
        "rate_duration": 2.0,
        "groups": (200, 5, 100.0, 2.0),
        "marks": (200, 5, 100.0, 2.0),
        "notify": (100, 10),
        "idle": (500, 2.0),
        "cluster": (100, 20.0, 2.0),
        "rest": (10, 10, 60, 2.0),
    },
    "full": {
        "repeats": 3,
        "fanout": [(500, 200), (1000, 200), (2000, 100)],
        "rate_members": 1000,
        "rates": [50.0, 5.0],
        "rate_duration": 10.0,
        "groups": (1000, 5, 500.0, 10.0),
        "marks": (1000, 5, 500.0, 10.0),
        "notify": (1000, 50),
        "idle": (10000, 10.0),
        "cluster": (500, 20.0, 10.0),
        "rest": (50, 50, 120, 10.0),
    },
}

APPLIES = {
    "fanout": {*TARGETS, *OPTIONAL_TARGETS},
    "rate": {*TARGETS, *OPTIONAL_TARGETS},
    "groups": {*TARGETS, *OPTIONAL_TARGETS},
    "marks": {"service-prod", "service-embedded"},
    "notify": {"service-prod", "service-embedded"},
    "idle": {*TARGETS, *OPTIONAL_TARGETS},
    "cluster": {"service-prod"},
    "rest": {"service-prod", "service-embedded"},
}


def variants(scenario: str, p: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(variant name, keyword arguments of the scenario function)."""
    if scenario == "fanout":
        return [(f"fanout-{m}x{n}", {"members": m, "messages": n}) for m, n in p["fanout"]]
    if scenario == "rate":
        return [
            (
                f"rate-{r:g}ps-{p['rate_members']}",
                {"members": p["rate_members"], "per_s": r, "duration": p["rate_duration"]},
            )
            for r in p["rates"]
        ]
    if scenario == "groups":
        conns, size, r, d = p["groups"]
        return [
            (
                f"groups-{conns // size}x{size}-{r:g}ps",
                {"conns": conns, "size": size, "per_s": r, "duration": d},
            )
        ]
    if scenario == "marks":
        conns, size, r, d = p["marks"]
        return [
            (
                f"marks-{conns // size}x{size}-{r:g}ps",
                {"conns": conns, "size": size, "per_s": r, "duration": d},
            )
        ]
    if scenario == "notify":
        n, k = p["notify"]
        return [(f"notify-{n}x{k}", {"users_n": n, "pushes": k})]
    if scenario == "idle":
        n, d = p["idle"]
        return [(f"idle-{n}", {"conns": n, "duration": d})]
    if scenario == "cluster":
        m, r, d = p["cluster"]
        return [(f"cluster-{m}-{r:g}ps", {"members": m, "per_s": r, "duration": d})]
    if scenario == "rest":
        readers, conc, msgs, d = p["rest"]
        return [
            (
                f"rest-offline-c{conc}",
                {"readers": readers, "concurrency": conc, "messages": msgs, "duration": d},
            )
        ]
    raise ValueError(scenario)


def load_results(spec: str) -> dict[str, Any]:
    """A results file; `FILE=PREFIX` keeps only its variants starting with PREFIX, and
    `FILE=!PREFIX` all but those (to take a scenario from a later run)."""
    path, _, prefix = spec.partition("=")
    results: dict[str, Any] = json.loads(Path(path).read_text())
    keep = not prefix.startswith("!")
    prefix = prefix.lstrip("!")
    if prefix:
        results["runs"] = [r for r in results["runs"] if r["variant"].startswith(prefix) == keep]
    return results


def parse_pairs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        a, b = part.lower().split("x")
        out.append((int(a), int(b)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the `make bench` run (default)")
    mode.add_argument("--full", action="store_true", help="full sizes, 3 repeats")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--repeats", type=int, help="runs per scenario × target (median reported)")
    ap.add_argument("--workers", type=int, default=2, help="load-generator processes")
    ap.add_argument("--client", choices=["raw", "websockets"], default="raw")
    ap.add_argument("--fanout", help="MEMBERSxMESSAGES[,…], e.g. 1000x200,2000x100")
    ap.add_argument("--rate-members", type=int)
    ap.add_argument("--rates", help="messages per second, e.g. 50,5")
    ap.add_argument("--rate-duration", type=float)
    ap.add_argument("--groups", help="CONNS,SIZE,RATE,SECONDS e.g. 1000,5,500,10")
    ap.add_argument("--marks", help="as --groups, for the marks scenario")
    ap.add_argument("--notify", help="USERS,PUSHES e.g. 1000,50 (at most 1000 users)")
    ap.add_argument("--idle", help="CONNS,SECONDS e.g. 10000,10")
    ap.add_argument("--cluster", help="MEMBERS,RATE,SECONDS e.g. 500,20,10")
    ap.add_argument("--rest", help="READERS,CONCURRENCY,MESSAGES,SECONDS e.g. 50,50,120,10")
    ap.add_argument("--payload", type=int, default=64, help="padding characters per message")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--docs", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--plots-dir", default=str(ROOT / "docs" / "bench"))
    ap.add_argument("--no-docs", action="store_true", help="write the JSON only")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--docs-from",
        help="re-render docs from results JSON file(s), comma-separated, and exit; FILE=PREFIX"
        " keeps only that file's variants starting with PREFIX (e.g. run.json=rest), FILE=!PREFIX"
        " drops them",
    )
    ap.add_argument("--redis-db", type=int, default=11, help="Redis db (FLUSHDB'd) for prod")
    ap.add_argument(
        "--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN"
    )
    ap.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for the service (repeatable), e.g. WS_SEND_QUEUE=256",
    )
    ap.add_argument("--keep-db", action="store_true")
    ap.add_argument("--keep-logs", action="store_true", help="keep server logs (temp dir)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record the service during message scenarios (top frames in the JSON)",
    )
    ap.add_argument(
        "--profile-dir",
        type=Path,
        help="with --profile: keep py-spy's raw collapsed stacks here (else they go with the"
        " temp dir)",
    )
    ap.add_argument("--time-limit", type=float, default=3600, help="stop starting runs after")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="the servers on the first CPU, the load generator and this process on the others"
        " (Linux, 2 CPUs or more); Postgres and Redis are not moved; variants are named"
        " …-pinned",
    )
    return ap.parse_args(argv)


def pin_layout() -> tuple[set[int], set[int]]:
    """(server CPUs, generator CPUs) for `--pin`: the first CPU this process may use, and the
    rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs 2 CPUs or more")
    return {cpus[0]}, set(cpus[1:])


def profile_dir(args: argparse.Namespace, tmp: Path) -> Path | None:
    if not args.profile:
        return None
    if args.profile_dir is None:
        return tmp
    args.profile_dir.mkdir(parents=True, exist_ok=True)
    return Path(args.profile_dir)


def profile_from(args: argparse.Namespace) -> dict[str, Any]:
    p = dict(PROFILES["full" if args.full else "quick"])
    if args.repeats:
        p["repeats"] = args.repeats
    if args.fanout:
        p["fanout"] = parse_pairs(args.fanout)
    if args.rate_members:
        p["rate_members"] = args.rate_members
    if args.rates:
        p["rates"] = [float(x) for x in args.rates.split(",")]
    if args.rate_duration:
        p["rate_duration"] = args.rate_duration
    if args.groups:
        c, s, r, d = args.groups.split(",")
        p["groups"] = (int(c), int(s), float(r), float(d))
    if args.marks:
        c, s, r, d = args.marks.split(",")
        p["marks"] = (int(c), int(s), float(r), float(d))
    if args.notify:
        n, k = args.notify.split(",")
        p["notify"] = (int(n), int(k))
    if args.idle:
        c, d = args.idle.split(",")
        p["idle"] = (int(c), float(d))
    if args.cluster:
        m, r, d = args.cluster.split(",")
        p["cluster"] = (int(m), float(r), float(d))
    if args.rest:
        rd, c, m, d = args.rest.split(",")
        p["rest"] = (int(rd), int(c), int(m), float(d))
    return p


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "websockets",
        "uvicorn",
        "fastapi",
        "starlette",
        "uvloop",
        "httptools",
        "sqlalchemy",
        "asyncpg",
        "aiosqlite",
        "redis",
        "orjson",
        "python-jose",
        "httpx",
        "matplotlib",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


FUNCS: dict[str, Any] = {
    "fanout": scenarios.fanout,
    "rate": scenarios.rate,
    "groups": scenarios.groups,
    "marks": scenarios.marks,
    "notify": scenarios.notify,
    "idle": scenarios.idle,
    "cluster": scenarios.cluster,
    "rest": scenarios.rest,
}


async def start_target(env: Environment, target: str, scenario: str) -> list[Server]:
    heartbeat = 5.0 if scenario == "idle" else 30.0
    if target == "service-prod":
        await env.flush_redis()
    if scenario == "cluster":
        return [
            await env.start(target, heartbeat=heartbeat, tag="-a"),
            await env.start(target, heartbeat=heartbeat, tag="-b"),
        ]
    return [await env.start(target, heartbeat=heartbeat)]


async def session(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    profile = profile_from(args)
    wanted_s = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    wanted_t = [t.strip() for t in args.targets.split(",") if t.strip()]
    for s in wanted_s:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r} (one of {', '.join(SCENARIOS)})")
    for t in wanted_t:
        if t not in TARGETS and t not in OPTIONAL_TARGETS:
            known = ", ".join((*TARGETS, *OPTIONAL_TARGETS))
            raise SystemExit(f"unknown target {t!r} (one of {known})")
    pin = pin_layout() if args.pin else None
    if pin is not None:
        os.sched_setaffinity(0, pin[1])  # before any thread starts: they inherit it
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="campushub-bench-"))
    env = Environment(
        tmpdir=tmp,
        secret=SECRET,
        pg_admin=args.pg_admin,
        redis_db=args.redis_db,
        keep_db=args.keep_db,
        service_overrides=dict(kv.split("=", 1) for kv in args.service_env),
        server_cpus=pin[0] if pin is not None else None,
    )
    needs_prod = "service-prod" in wanted_t and any("service-prod" in APPLIES[s] for s in wanted_s)
    meta: dict[str, Any] = {
        "mode": "full" if args.full else "quick",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": "python bench/run.py " + shlex.join(sys.argv[1:]),
        "profile": profile,
        "scenarios": wanted_s,
        "targets": wanted_t,
        "workers": args.workers,
        "client": args.client,
        "payload_chars": args.payload,
        "machine": machine_info(),
        "app": app_revision(),
        "versions": versions(),
        "server_commands": {},
        "notes": [],
    }
    runs: list[dict[str, Any]] = []
    pool = WorkerPool(args.workers, args.client, pin[1] if pin is not None else None)
    try:
        if needs_prod:
            await env.create_database()
            meta["versions"].update(await env.server_versions())
            meta["server_commands"]["migrate"] = env.commands[-1].replace(str(ROOT) + "/", "")
        meta["machine"]["disk_sync"] = disk = await asyncio.to_thread(
            disk_sync_probe, str(tmp), 5.0 if args.full else 1.0
        )
        if env.pg_data_directory is not None:
            with contextlib.suppress(OSError):
                disk["same_device_as_postgres"] = (
                    os.stat(env.pg_data_directory).st_dev == os.stat(tmp).st_dev
                )
        print(
            f"disk: {disk['syncs']} fdatasync in {disk['seconds']} s, p50 {disk['p50_ms']} ms,"
            f" p99 {disk['p99_ms']} ms, max {disk['max_ms']} ms, {disk['over_50ms']} over 50 ms",
            flush=True,
        )
        await pool.start()
        ctx = scenarios.Ctx(
            env=env,
            pool=pool,
            secret=SECRET,
            pad="x" * args.payload,
            profile_dir=profile_dir(args, tmp),
        )
        for scenario in wanted_s:
            targets = [t for t in wanted_t if t in APPLIES[scenario]]
            if not targets:
                continue
            fresh_each_run = scenario == "idle"
            servers: dict[str, list[Server]] = {}
            for variant, kwargs in variants(scenario, profile):
                if pin is not None:
                    variant += "-pinned"
                for rep in range(profile["repeats"]):
                    # Rotate the order so no target always runs first (or right after another).
                    order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
                    for target in order:
                        if time.time() - started > args.time_limit:
                            meta["notes"].append(f"time limit reached before {variant} {target}")
                            continue
                        if target not in servers or any(
                            s.proc.poll() is not None for s in servers[target]
                        ):
                            for s in servers.pop(target, []):
                                await env.stop(s)
                            servers[target] = await start_target(env, target, scenario)
                            meta["server_commands"].setdefault(
                                target, describe_command(servers[target][0])
                            )
                        t0 = time.time()
                        record: dict[str, Any] = {
                            "scenario": scenario,
                            "variant": variant,
                            "target": target,
                            "repeat": rep,
                            "params": kwargs,
                        }
                        if pin is not None:
                            # As the processes have them (every thread), read back, not as
                            # asked.
                            record["pin"] = {
                                "server_cpus": process_cpus(servers[target][0].pid),
                                "generator_cpus": pool.worker_cpus,
                            }
                        try:
                            metrics, cdfs = await FUNCS[scenario](
                                ctx, target, servers[target], **kwargs
                            )
                            record["metrics"] = metrics
                            record["cdf"] = cdfs
                        except Exception:
                            record["error"] = traceback.format_exc()
                            with contextlib.suppress(Exception):
                                await pool.all("close", _timeout=60)
                        record["seconds"] = round(time.time() - t0, 2)
                        if servers[target][0].revision:
                            record["app"] = servers[target][0].revision
                            now = app_revision()["app_digest"]
                            if now != record["app"]["app_digest"]:
                                record["app"]["changed_during_run"] = now
                        for s in servers[target]:
                            if s.proc.poll() is not None:
                                record.setdefault("server_exit", s.proc.returncode)
                                record["server_log_tail"] = s.log_tail_since(0)[-3000:]
                        runs.append(record)
                        print(report.progress_line(record), flush=True)
                        if fresh_each_run:
                            for s in servers.pop(target, []):
                                await env.stop(s)
            for group in servers.values():
                for s in group:
                    await env.stop(s)
    finally:
        with contextlib.suppress(Exception):
            await pool.stop()
        await env.stop_all()
        with contextlib.suppress(Exception):
            await env.drop_database()
        if needs_prod:
            with contextlib.suppress(Exception):
                await env.flush_redis()
        if args.keep_logs:
            meta["logs_dir"] = str(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["duration_s"] = round(time.time() - started, 1)
    results = {"meta": meta, "runs": runs}
    results["summary"] = report.summarize(runs)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.docs_from:
        files = [f for f in args.docs_from.split(",") if f]
        results = report.merge([load_results(f) for f in files])
        rel = ",".join(os.path.relpath(f, ROOT) for f in files)
        report.write_docs(results, Path(args.docs), Path(args.plots_dir), rel, not args.no_plots)
        print(f"wrote {args.docs}")
        return 0
    results = asyncio.run(session(args))
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {out}")
    if not args.no_docs:
        try:
            rel = os.path.relpath(out, ROOT)
        except ValueError:
            rel = str(out)
        report.write_docs(results, Path(args.docs), Path(args.plots_dir), rel, not args.no_plots)
        print(f"docs: {args.docs}")
    print(report.text_table(results))
    bad = report.integrity_failures(results)
    if bad:
        print("INTEGRITY: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
