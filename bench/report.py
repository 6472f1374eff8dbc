"""Summaries (median [min–max] over repeats, ratios to the baselines), docs/BENCHMARKS.md and
the PNG plots in docs/bench/, all rendered from a results JSON."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

BASELINES = ("websockets", "fastapi")
SUMMARY_TARGETS = ("service-prod", "service-embedded", "websockets", "fastapi")
# uvicorn-asgi: opt-in (bench/baselines/uvicorn_asgi.py), shown under Results only.
TARGET_ORDER = (*SUMMARY_TARGETS, "uvicorn-asgi")

# (metric key, label, "higher"/"lower" is better), per scenario, in table order.
SHOW: dict[str, list[tuple[str, str, str]]] = {
    "fanout": [
        ("deliveries_per_s", "deliveries/s", "higher"),
        ("deliveries_per_server_cpu_s", "deliveries per server CPU-second", "higher"),
        ("lat_p50_ms", "latency p50 (ms)", "lower"),
        ("lat_p99_ms", "latency p99 (ms)", "lower"),
    ],
    "rate": [
        ("lat_p50_ms", "latency p50 (ms)", "lower"),
        ("lat_p90_ms", "latency p90 (ms)", "lower"),
        ("lat_p99_ms", "latency p99 (ms)", "lower"),
        ("lat_max_ms", "latency max (ms)", "lower"),
        ("server_us_per_delivery", "server CPU µs per delivery", "lower"),
    ],
    "groups": [
        ("lat_p50_ms", "latency p50 (ms)", "lower"),
        ("lat_p90_ms", "latency p90 (ms)", "lower"),
        ("lat_p99_ms", "latency p99 (ms)", "lower"),
        ("lat_max_ms", "latency max (ms)", "lower"),
        ("achieved_send_rate", "sends/s offered", "higher"),
        ("acked_per_s", "sends acked/s (first send → last ack)", "higher"),
        ("server_us_per_delivery", "server CPU µs per delivery", "lower"),
    ],
    "marks": [
        ("lat_p50_ms", "message latency p50 (ms)", "lower"),
        ("lat_p99_ms", "message latency p99 (ms)", "lower"),
        ("acked_per_s", "sends acked/s (first send → last ack)", "higher"),
        ("marks_acked_per_s", "read marks acked/s", "higher"),
        ("mark_p50_ms", "read mark → ack p50 (ms)", "lower"),
        ("mark_p99_ms", "read mark → ack p99 (ms)", "lower"),
        ("server_us_per_delivery", "server CPU µs per delivery (marks included)", "lower"),
    ],
    "notify": [
        ("deliveries_per_s", "notifications delivered/s", "higher"),
        ("lat_p50_ms", "push → delivery p50 (ms)", "lower"),
        ("lat_p99_ms", "push → delivery p99 (ms)", "lower"),
        ("push_p50_ms", "POST /notifications → 201 p50 (ms)", "lower"),
        ("server_us_per_delivery", "server CPU µs per delivery (storing included)", "lower"),
    ],
    "idle": [
        ("rss_per_conn_kib", "server RSS per connection (KiB)", "lower"),
        ("idle_cpu_pct", "server CPU at rest (% of a core)", "lower"),
        ("connects_per_s", "authenticated connections/s", "higher"),
        ("server_cpu_ms_per_connect", "server CPU ms per connect + auth", "lower"),
    ],
    "cluster": [
        ("single_lat_p50_ms", "one instance: p50 (ms)", "lower"),
        ("single_lat_p99_ms", "one instance: p99 (ms)", "lower"),
        ("local_p50_ms", "two, same instance: p50 (ms)", "lower"),
        ("local_p99_ms", "two, same instance: p99 (ms)", "lower"),
        ("remote_p50_ms", "two, cross-instance: p50 (ms)", "lower"),
        ("remote_p99_ms", "two, cross-instance: p99 (ms)", "lower"),
    ],
    "rest": [
        ("req_per_s", "offline fetches/s", "higher"),
        ("lat_p50_ms", "latency p50 (ms)", "lower"),
        ("lat_p99_ms", "latency p99 (ms)", "lower"),
    ],
}

HEADLINE: dict[str, list[str]] = {
    "fanout": ["deliveries_per_s", "deliveries_per_server_cpu_s", "lat_p50_ms"],
    "rate": ["lat_p50_ms", "lat_p99_ms", "server_us_per_delivery"],
    "groups": ["lat_p50_ms", "lat_p99_ms", "acked_per_s"],
    "marks": ["lat_p99_ms", "marks_acked_per_s", "mark_p99_ms"],
    "notify": ["deliveries_per_s", "lat_p99_ms", "push_p50_ms"],
    "idle": ["rss_per_conn_kib", "server_cpu_ms_per_connect", "idle_cpu_pct"],
    "cluster": ["single_lat_p50_ms", "local_p50_ms", "remote_p50_ms", "remote_p99_ms"],
    "rest": ["req_per_s", "lat_p99_ms"],
}

SCENARIO_TEXT = {
    "fanout": "One group, one sender; the next `send_message` goes out when the previous "
    "`ack` is back. deliveries/s = `new_message` frames received by all members (the "
    "sender's own connection included) ÷ time from the first send to the last delivery. "
    "Latency: send → each receiver.",
    "rate": "One group; messages at a fixed rate (open loop) from random members. "
    "Latency: send → each receiver.",
    "groups": "Connections in groups of 5; messages at a fixed total rate from random "
    "senders into their own group. On the service each send is a database transaction "
    "(seq allocation + insert + commit) and, in production mode, a Redis Streams round "
    "trip before the fan-out.",
    "marks": "service targets only: `groups`, with every receiver sending `mark_read` "
    "for each message as it arrives (a chat open on screen, no debouncing): a read mark per "
    "delivery beside the sends, each a database write when it moves the mark. After the run "
    "the marks stored for a sample of users are read back over REST and must equal the "
    "highest each was acked.",
    "notify": "service targets only: N connected users; a service pushes notifications, "
    "each to all N (`POST /api/v1/notifications` with a service token: one stored row per "
    "user), the next when the previous is answered 201. Latency: push → each user's "
    "`notification` frame. Every user must get every notification once, in push order.",
    "idle": "N authenticated connections doing nothing; the server sends protocol pings "
    "every 5 s (all targets set to 5 s here). RSS per connection = (RSS after − RSS "
    "before) ÷ N, each run on a freshly started server; CPU over the idle window; "
    "connections/s = N ÷ time to open and authenticate all of them (100 handshakes in "
    "flight per generator process).",
    "cluster": "service-prod only: two instances on the same Postgres and Redis. Same "
    "group size and rate, first with every member on instance A, then with members "
    "alternating between A and B (random senders on both): same-instance vs "
    "cross-instance receivers.",
    "rest": "service targets only: `GET /api/v1/messages/offline?limit=50` from "
    "concurrent keep-alive HTTP/1.1 connections (a plain client on asyncio streams, split "
    "over the generator processes), each reader having more than 50 unread messages; it "
    "runs after the other scenarios, on the database they filled.",
}


# -- summaries -------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    return float(v)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """{variant: {target: {metric: {median, min, max, n}}}} over the successful repeats."""
    out: dict[str, Any] = {}
    for run in runs:
        if "metrics" not in run:
            continue
        slot = out.setdefault(run["variant"], {}).setdefault(run["target"], {})
        for key, value in run["metrics"].items():
            v = _num(value)
            if v is not None:
                slot.setdefault(key, []).append(v)
    for targets in out.values():
        for target, metrics in targets.items():
            targets[target] = {
                k: {
                    "median": statistics.median(vs),
                    "min": min(vs),
                    "max": max(vs),
                    "n": len(vs),
                }
                for k, vs in metrics.items()
            }
    return out


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several results files as one (for --docs-from a.json,b.json): runs concatenated."""
    if len(parts) == 1:
        return parts[0]
    meta = dict(parts[0]["meta"])
    meta["mode"] = " + ".join(p["meta"]["mode"] for p in parts)
    meta["command"] = [p["meta"]["command"] for p in parts]
    meta["duration_s"] = round(sum(p["meta"]["duration_s"] for p in parts), 1)
    meta["server_commands"] = {}
    meta["notes"] = []
    for p in parts:
        meta["server_commands"].update(p["meta"].get("server_commands", {}))
        meta["notes"].extend(p["meta"].get("notes", []))
        meta["versions"] = {**p["meta"].get("versions", {}), **meta["versions"]}
    runs = [r for p in parts for r in p["runs"]]
    return {"meta": meta, "runs": runs, "summary": summarize(runs)}


def integrity_failures(results: dict[str, Any]) -> list[str]:
    bad = []
    for run in results["runs"]:
        name = f"{run['variant']} {run['target']} #{run['repeat']}"
        if "error" in run:
            bad.append(f"{name}: error")
            continue
        m = run["metrics"]
        for key in ("lost", "duplicates", "out_of_order", "marks_unanswered", "marks_mismatched"):
            if m.get(key):
                bad.append(f"{name}: {key}={m[key]}")
    return bad


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(stat: dict[str, float] | None) -> str:
    if not stat:
        return "–"
    if stat["n"] == 1:
        return fmt(stat["median"])
    return f"{fmt(stat['median'])} [{fmt(stat['min'])}–{fmt(stat['max'])}]"


def ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> str:
    if not a or not b or not b["median"]:
        return "–"
    r = a["median"] / b["median"]
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def progress_line(run: dict[str, Any]) -> str:
    head = f"[{run['seconds']:6.1f}s] {run['variant']:<24} {run['target']:<17} #{run['repeat']}"
    if "error" in run:
        return head + " ERROR " + str(run["error"]).strip().splitlines()[-1][:200]
    m = run["metrics"]
    keys = [k for k, _, _ in SHOW.get(run["scenario"], [])]
    parts = [f"{k}={fmt(_num(m.get(k)))}" for k in keys if k in m]
    parts.append(
        f"lost/dup/ooo={m.get('lost', 0)}/{m.get('duplicates', 0)}/{m.get('out_of_order', 0)}"
    )
    parts.append(f"srvCPU={fmt(_num(m.get('server_cpu_pct')))}%")
    if m.get("server_kernel_share_pct") is not None:
        parts.append(f"srvKernel={fmt(_num(m['server_kernel_share_pct']))}%")
    parts.append(f"genCPU={fmt(_num(m.get('generator_cpu_pct')))}%")
    if m.get("unexpected_closes"):
        parts.append(f"closes={m['unexpected_closes']}")
    if m.get("log_issue_lines"):
        parts.append(f"log_issues={m['log_issue_lines']}")
    return head + " " + " ".join(parts)


def _ordered_targets(targets: Any) -> list[str]:
    return [t for t in TARGET_ORDER if t in targets]


def _variants(results: dict[str, Any]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for run in results["runs"]:
        seen.setdefault(run["variant"], run["scenario"])
    return list(seen.items())


def text_table(results: dict[str, Any]) -> str:
    lines = []
    summary = results["summary"]
    for variant, scenario in _variants(results):
        for key, label, _ in SHOW.get(scenario, []):
            for target in _ordered_targets(summary.get(variant, {})):
                stat = summary[variant][target].get(key)
                if stat is None:
                    continue
                base = [
                    f"÷{b}={ratio(stat, summary[variant].get(b, {}).get(key))}"
                    for b in BASELINES
                    if b != target and b in summary[variant]
                ]
                lines.append(
                    f"{variant:<24} {label:<34} {target:<17} {cell(stat):<28} {' '.join(base)}"
                )
    return "\n".join(lines)


# -- markdown --------------------------------------------------------------------------------


def _integrity_rows(results: dict[str, Any], variant: str) -> list[str]:
    rows = []
    by_target: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        if run["variant"] == variant:
            by_target.setdefault(run["target"], []).append(run)
    for target in _ordered_targets(by_target):
        rs = by_target[target]
        ok = [r for r in rs if "metrics" in r]
        errs = len(rs) - len(ok)
        lost = sum(r["metrics"].get("lost", 0) for r in ok)
        dup = sum(r["metrics"].get("duplicates", 0) for r in ok)
        ooo = sum(r["metrics"].get("out_of_order", 0) for r in ok)
        closes: dict[str, int] = {}
        for r in ok:
            for k, v in (r["metrics"].get("unexpected_closes") or {}).items():
                closes[k] = closes.get(k, 0) + v
        server_err = sum(sum((r["metrics"].get("server_errors") or {}).values()) for r in ok)
        log_lines = sum(r["metrics"].get("log_issue_lines", 0) for r in ok)

        def med(key: str, runs: list[dict[str, Any]] = ok) -> str:
            vals = [_num(r["metrics"].get(key)) for r in runs]
            nums = [v for v in vals if v is not None]
            return fmt(statistics.median(nums)) if nums else "–"

        close_text = ", ".join(f"{k}×{v}" for k, v in sorted(closes.items())) or "0"
        # Runs recorded before the kernel share was measured have none: show nothing then.
        share = med("server_kernel_share_pct")
        kernel_share = f" ({share} %)" if share != "–" else ""
        rows.append(
            f"| {target} | {len(ok)}{f' (+{errs} failed)' if errs else ''} | {lost} | {dup} | "
            f"{ooo} | {close_text} | {server_err} | {log_lines} | {med('server_cpu_pct')}"
            f"{kernel_share} | "
            f"{med('generator_cpu_pct')} / {med('generator_cpu_pct_max_worker')} | "
            f"{med('postgres_redis_cpu_pct')} | {med('machine_busy_pct')} | "
            f"{med('io_pressure_pct')} / {med('cpu_pressure_pct')} |"
        )
    return rows


def write_docs(
    results: dict[str, Any], docs: Path, plots_dir: Path, results_rel: str, plots: bool = True
) -> None:
    meta = results["meta"]
    summary = results["summary"]
    plot_files: dict[str, str] = {}
    if plots:
        try:
            plot_files = write_plots(results, plots_dir)
        except ImportError:
            meta.setdefault("notes", []).append("matplotlib missing: no plots")
    rel_plots = _rel(plots_dir, docs.parent)
    m = meta["machine"]
    v = meta["versions"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks")
    w("")
    w(
        "Generated by `bench/run.py` from "
        f"`{results_rel}` ({meta['mode']} run, {meta['started']}, {meta['duration_s']} s). "
        "Do not edit by hand: rerun the bench, or re-render with "
        f"`python bench/run.py --docs-from {results_rel}` (bench/notes.md is included "
        "verbatim)."
    )
    w("")
    w(
        "Targets: **service-prod** — this service in production mode (Postgres + Redis "
        "Streams, one uvicorn worker, uvloop + httptools); **service-embedded** — the "
        "same code on SQLite and the in-process bus; **websockets** — baseline (a), the "
        "`websockets` library's own server with `websockets.broadcast()` "
        "(`bench/baselines/ws_broadcast.py`), the practical floor for Python; "
        "**fastapi** — baseline (b), the FastAPI-docs `ConnectionManager` pattern under "
        "uvicorn, one `await send_text(json.dumps(...))` per recipient "
        "(`bench/baselines/fastapi_manager.py`). The baselines speak the same JSON subset "
        "(auth with the same JWT, join, send → ack + `new_message` with a per-group seq) "
        "and store nothing."
        + (
            " **uvicorn-asgi** (opt-in) — the same subset as a bare ASGI app under uvicorn, "
            "no framework, one awaited `websocket.send` per recipient "
            "(`bench/baselines/uvicorn_asgi.py`): uvicorn's own cost, told apart from a "
            "framework's and the service's."
            if any("uvicorn-asgi" in per for per in summary.values())
            else ""
        )
    )
    w("")
    w(
        "Each cell is the median of the runs counted in the *runs* column with [min–max]; "
        "ratios are target ÷ baseline medians (for latency, CPU and memory lower is better; "
        "for rates higher is better). Targets run interleaved in the same session, in a "
        "rotating order."
    )
    w("")
    w("## Machine and versions")
    w("")
    w(
        f"- {m['nproc']} CPU cores ({m['cpu_model']}), {m['mem_total_gib']} GiB memory, "
        f"Linux {m['kernel']}; load average at start {m['loadavg_at_start']} (the machine "
        "is shared: see the machine-busy column)."
    )
    disk = m.get("disk_sync")
    if disk:
        where = "in the bench's temp directory" + {
            True: " (the file system of the Postgres data directory)",
            False: " (not the file system of the Postgres data directory)",
        }.get(disk.get("same_device_as_postgres"), "")
        w(
            f"- Disk, what a commit waits for: 8 KiB written + `fdatasync`, back to back for "
            f"{disk['seconds']} s {where}: {disk['syncs']:,} syncs, p50 {disk['p50_ms']} ms, "
            f"p99 {disk['p99_ms']} ms, max {disk['max_ms']} ms, {disk['over_50ms']} over 50 ms. "
            "A slow sync holds every commit meanwhile (the `groups` tail on the service)."
        )
    w("- " + ", ".join(f"{k} {val}" for k, val in v.items()))
    app = meta.get("app") or {}
    if app:
        w(
            f"- Service code: commit {app.get('commit', '?')}, "
            f"{app.get('app_uncommitted_files', '?')} uncommitted file(s) under app/ and "
            f"alembic/ at the start, app/ digest {app.get('app_digest')}."
        )
    client = (
        "raw RFC 6455 clients (bench/loadgen.py)"
        if meta["client"] == "raw"
        else "`websockets` library clients"
    )
    w(
        f"- Load generator: {meta['workers']} processes × one uvloop event loop, {client}; "
        f"{meta['payload_chars']} padding characters per message."
    )
    w("")
    w("## Summary")
    w("")
    w(
        "Headline metrics, median [min–max] over the runs; the ratio columns divide the "
        "service's median by each baseline's. Details, integrity counts and CPU per variant "
        "follow under *Results*."
    )
    w("")
    w(
        "| variant | metric | service-prod | service-embedded | websockets | fastapi | "
        "prod ÷ websockets | prod ÷ fastapi | embedded ÷ websockets | embedded ÷ fastapi |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|")
    for variant, scenario in _variants(results):
        per = summary.get(variant, {})
        for key in HEADLINE.get(scenario, []):
            label = next((lab for k, lab, _ in SHOW[scenario] if k == key), key)
            stats = {t: per.get(t, {}).get(key) for t in SUMMARY_TARGETS}
            if not any(stats.values()):
                continue
            cells = [cell(stats[t]) for t in SUMMARY_TARGETS]
            ratios = [
                ratio(stats[t], stats[b])
                for t in ("service-prod", "service-embedded")
                for b in BASELINES
            ]
            w(f"| {variant} | {label} | " + " | ".join(cells + ratios) + " |")
    w("")
    w("## Results")
    w("")
    for variant, scenario in _variants(results):
        targets = _ordered_targets(summary.get(variant, {}))
        w(f"### {variant}")
        w("")
        w(SCENARIO_TEXT.get(scenario, ""))
        w("")
        first = next(r for r in results["runs"] if r["variant"] == variant)
        w("Parameters: " + ", ".join(f"{k}={val}" for k, val in first["params"].items()) + ".")
        w("")
        if "pin" in first:
            server, generator = (
                ", ".join(map(str, first["pin"][k])) for k in ("server_cpus", "generator_cpus")
            )
            w(
                f"Pinned (`--pin`): the server on CPU {server}, the load generator on CPU "
                f"{generator}; Postgres and Redis where the scheduler puts them."
            )
            w("")
        if targets:
            w("| metric | target | median [min–max] | ÷ websockets | ÷ fastapi |")
            w("|---|---|---|---|---|")
            for key, label, _ in SHOW.get(scenario, []):
                for target in targets:
                    stat = summary[variant][target].get(key)
                    if stat is None:
                        continue
                    r_ws = ratio(stat, summary[variant].get("websockets", {}).get(key))
                    r_fa = ratio(stat, summary[variant].get("fastapi", {}).get(key))
                    if target == "websockets":
                        r_ws = "1"
                    if target == "fastapi":
                        r_fa = "1"
                    w(f"| {label} | {target} | {cell(stat)} | {r_ws} | {r_fa} |")
            w("")
        w(
            "| target | runs | lost | duplicated | out of order | server closes | error "
            "frames | log warnings | server CPU % (share in the kernel) | generator CPU % (all / "
            "busiest process) | Postgres + Redis CPU % | machine busy % | stalled on I/O / "
            "CPU % |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        out.extend(_integrity_rows(results, variant))
        w("")
        for key in (f"cdf:{variant}",):
            if key in plot_files:
                w(f"![latency CDF, {variant}]({rel_plots}/{plot_files[key]})")
                w("")
    if "fanout" in plot_files:
        w("### Fan-out throughput vs group size")
        w("")
        w(
            "Every fanout variant above, by group size (message counts differ between "
            "variants: see their parameters)."
        )
        w("")
        w(f"![deliveries/s vs group size]({rel_plots}/{plot_files['fanout']})")
        w("")
    profiled = [
        r for r in results["runs"] if (r.get("metrics") or {}).get("profile", {}).get("samples")
    ]
    if profiled:
        w("## Where the service's time goes (py-spy)")
        w("")
        w(
            "`py-spy record --nonblocking --rate 200` on the service process over the measured "
            "window of each run (`--profile`); share of samples. *self*: the frame itself was "
            "on top of the stack; *inclusive*: anywhere in the stack (bootstrap frames left out)."
        )
        w("")
        seen: set[tuple[str, str]] = set()
        for r in profiled:
            pair = (r["variant"], r["target"])
            if pair in seen:
                continue
            seen.add(pair)
            prof = r["metrics"]["profile"]
            w(f"**{r['variant']} — {r['target']}** ({prof['samples']} samples)")
            w("")
            w("| self % | frame | | inclusive % | frame |")
            w("|---|---|---|---|---|")
            incl = [(f, v) for f, v in prof["inclusive"] if not _boring(f)][:14]
            own = prof["self"][:14]
            for i in range(max(len(own), len(incl))):
                a = own[i] if i < len(own) else ("", "")
                b = incl[i] if i < len(incl) else ("", "")
                w(f"| {a[1]} | `{a[0]}` | | {b[1]} | `{b[0]}` |".replace("``", ""))
            w("")
    failures = [r for r in results["runs"] if "error" in r]
    digests = {r["app"]["app_digest"] for r in results["runs"] if r.get("app")}
    changed = [r for r in results["runs"] if (r.get("app") or {}).get("changed_during_run")]
    if changed:
        meta.setdefault("notes", []).append(
            f"the service's code (app/) changed while this ran: {len(digests)} versions "
            f"measured ({', '.join(sorted(digests))}); compare service runs with care"
        )
    elif len(digests) > 1:  # result files of different runs rendered together
        scenarios: dict[str, set[str]] = {}
        for r in results["runs"]:
            if r.get("app"):
                scenarios.setdefault(r["app"]["app_digest"], set()).add(r["scenario"])
        meta.setdefault("notes", []).append(
            "these tables combine runs of "
            f"{len(digests)} versions of the service's code (app/): "
            + "; ".join(
                f"{digest} in {', '.join(sorted(names))}"
                for digest, names in sorted(scenarios.items())
            )
        )
    by_line: dict[str, dict[str, int]] = {}
    for r in results["runs"]:
        mm = r.get("metrics") or {}
        for key in {_normalize_log(line) for line in mm.get("log_issue_sample", [])}:
            where = by_line.setdefault(key, {})
            name = f"{r['variant']} {r['target']}"
            where[name] = where.get(name, 0) + 1
    issues = [
        f"`{line}` — sampled in: "
        + ", ".join(f"{name} ({n} run{'s' if n > 1 else ''})" for name, n in where.items())
        for line, where in by_line.items()
    ]
    if failures or issues or meta.get("notes"):
        w("## Problems seen during this run")
        w("")
        w(
            "Server log lines at WARNING or above (deduplicated; per run the *log warnings* "
            "column counts them all):"
        )
        w("")
        for r in failures:
            last = r["error"].strip().splitlines()[-1]
            w(f"- {r['variant']} {r['target']} #{r['repeat']} failed: `{last[:300]}`")
        for line in issues[:30]:
            w(f"- {line}")
        for note in meta.get("notes", []):
            w(f"- {note}")
        w("")
    notes = Path(__file__).with_name("notes.md")
    if notes.is_file():
        out.append(notes.read_text().rstrip())
        w("")
    w("## How it was measured")
    w("")
    w(
        "- Every message's content starts with `B|<time.time_ns() at send>|<sender "
        "instance>|`; each receiver computes send → receive latency on the same clock "
        "(same machine). Acks are timed too (`ack_*` in the JSON)."
    )
    w(
        "- Every receiver checks each group's seqs against the acked seqs: lost (acked, "
        "never delivered), duplicated, out of order (lower than a seq already seen). The "
        "run waits until every expected delivery arrived, or until nothing arrived for 3 s."
    )
    w(
        "- CPU: utime + stime from `/proc/<pid>/stat` for the server and for each "
        "generator process over the measured window (100 % = one core); machine busy % "
        "from `/proc/stat` over all cores, which includes everything else running on the "
        "machine. Postgres + Redis CPU: every `postgres` and `redis-server` process on the "
        "machine over the same window (they are shared, so others' use is included). RSS "
        "from `/proc/<pid>/status`. Stalled on I/O / CPU %: the share of the window in which "
        "some task on the machine waited for the disk / for a CPU (Linux's pressure stall "
        "information, `/proc/pressure/io` and `cpu`, `some` totals; – where the kernel has "
        "none or the run predates the column): a run whose I/O figure is high had commits "
        "waiting for a slow sync."
    )
    w(
        "- Limits raised on the service for load: "
        "`WS_CONNECT_RATE_PER_IP=1000000 RATE_LIMIT_MESSAGES_PER_SECOND=100000 "
        "RATE_LIMIT_BURST=100000 WS_MAX_CONNECTIONS=20000 WS_SEND_QUEUE=4096`; "
        "RLIMIT_NOFILE raised to the hard limit in every process; clients bind to "
        "127.0.0.2–127.0.0.9 so ephemeral ports never run short. service-prod gets a fresh "
        "Postgres database per bench session (migrated with `python -m app migrate`) and "
        "a FLUSHDB'd Redis db before each server start."
    )
    w("")
    w("## Commands")
    w("")
    w(
        "The bench invocation(s), then one server command per target as started by the "
        "bench (from the repository root with the venv's python; ports, database names and "
        "temp paths differ per run, and the idle scenario starts every target with a 5 s "
        "heartbeat instead of 30 s)."
    )
    w("")
    w("```sh")
    commands = meta["command"] if isinstance(meta["command"], list) else [meta["command"]]
    for command in commands:
        w(command)
    for target, cmd in meta.get("server_commands", {}).items():
        w(f"# {target}:")
        w(cmd)
    w("```")
    w("")
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text("\n".join(out))


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+\s*")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _normalize_log(line: str) -> str:
    return _UUID.sub("<id>", _TIMESTAMP.sub("", line)).strip()[:200]


_BORING = (
    "<module>",
    "_run_code",
    "_run_module_as_main",
    "Runner.run",
    "asyncio_run",
    "Server.run",
    "main (app/__main__",
    "_serve (app/__main__",
    "Middleware.__call__",
    "wrapped_app",
    "Starlette.__call__",
    "FastAPI.__call__",
    "Router.__call__",
    "APIRouter.app",
    "WebSocketRoute.handle",
    "run_asgi",
    "_bootstrap",
    "Thread.run",
)


def _boring(frame: str) -> bool:
    return any(b in frame for b in _BORING)


def _rel(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


# -- plots -----------------------------------------------------------------------------------

COLORS = {
    "service-prod": "#1f77b4",
    "service-embedded": "#2ca02c",
    "websockets": "#ff7f0e",
    "fastapi": "#d62728",
    "uvicorn-asgi": "#8c564b",
    "single": "#1f77b4",
    "local": "#2ca02c",
    "remote": "#9467bd",
}


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    ok = [r for r in runs if "metrics" in r and _num(r["metrics"].get(key)) is not None]
    if not ok:
        return None
    ok.sort(key=lambda r: r["metrics"][key])
    return ok[len(ok) // 2]


def write_plots(results: dict[str, Any], outdir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.scenarios import QUANTILES

    outdir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    qs = [q / 100 for q in QUANTILES]
    for variant, scenario in _variants(results):
        runs = [r for r in results["runs"] if r["variant"] == variant]
        curves: list[tuple[str, list[float]]] = []
        if scenario == "cluster":
            run = _median_run(runs, "remote_p50_ms")
            if run:
                for name in ("single", "local", "remote"):
                    if run["cdf"].get(name):
                        curves.append((name, run["cdf"][name]))
        else:
            for target in TARGET_ORDER:
                run = _median_run([r for r in runs if r["target"] == target], "lat_p50_ms")
                if run and run.get("cdf", {}).get("all"):
                    curves.append((target, run["cdf"]["all"]))
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for name, values in curves:
            pts = sorted(zip(values, qs[: len(values)], strict=False))
            xs = [max(x, 1e-3) for x, _ in pts]
            ax.plot(xs, [y for _, y in pts], label=name, color=COLORS.get(name), lw=1.8)
        ax.set_xscale("log")
        ax.set_xlabel("latency, send → receive (ms, log scale)")
        ax.set_ylabel("fraction of deliveries ≤ x")
        if scenario == "rest":
            ax.set_xlabel("request latency (ms, log scale)")
            ax.set_ylabel("fraction of requests ≤ x")
        ax.set_ylim(0, 1.0)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"Latency CDF — {variant} (median run)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        name = f"latency_cdf_{variant}.png"
        fig.savefig(outdir / name)
        plt.close(fig)
        files[f"cdf:{variant}"] = name
    # Fan-out deliveries/s (wall clock, and per server CPU-second) vs group size.
    fan = [
        r
        for r in results["runs"]
        if r["scenario"] == "fanout" and "metrics" in r and "pin" not in r
    ]
    if fan:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
        panels = (
            ("deliveries_per_s", "deliveries/s (wall clock)"),
            ("deliveries_per_server_cpu_s", "deliveries per server CPU-second"),
        )
        for ax, (key, title) in zip(axes, panels, strict=True):
            for target in TARGET_ORDER:
                by_size: dict[int, list[float]] = {}
                for r in fan:
                    value = _num(r["metrics"].get(key))
                    if r["target"] == target and value is not None:
                        by_size.setdefault(r["params"]["members"], []).append(value)
                if not by_size:
                    continue
                sizes = sorted(by_size)
                meds = [statistics.median(by_size[s]) for s in sizes]
                lo = [m - min(by_size[s]) for m, s in zip(meds, sizes, strict=True)]
                hi = [max(by_size[s]) - m for m, s in zip(meds, sizes, strict=True)]
                ax.errorbar(
                    sizes,
                    meds,
                    yerr=[lo, hi],
                    marker="o",
                    capsize=3,
                    label=target,
                    color=COLORS.get(target),
                )
            ax.set_xlabel("group size (members, one connection each)")
            ax.set_title(title + " — median, min–max")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(outdir / "fanout_throughput.png")
        plt.close(fig)
        files["fanout"] = "fanout_throughput.png"
    return files
