"""Keeps bench/run.py working: a tiny fan-out against the embedded service, the websockets
baseline and the opt-in bare-ASGI baseline, one repeat, results and docs into a temp dir. No
timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_fanout_tiny(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    docs = tmp_path / "BENCHMARKS.md"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--quick",
        "--scenarios",
        "fanout",
        "--targets",
        "service-embedded,websockets,uvicorn-asgi",
        "--fanout",
        "20x10",
        "--repeats",
        "1",
        "--workers",
        "1",
        "--results-dir",
        str(results_dir),
        "--docs",
        str(docs),
        "--plots-dir",
        str(tmp_path / "plots"),
        "--time-limit",
        "50",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = list(results_dir.glob("*.json"))
    assert len(written) == 1
    results = json.loads(written[0].read_text())
    runs = results["runs"]
    assert {r["target"] for r in runs} == {"service-embedded", "websockets", "uvicorn-asgi"}
    for run in runs:
        assert "error" not in run, run.get("error")
        m = run["metrics"]
        assert m["connections"] == 20
        assert m["acked"] == 10
        assert m["deliveries"] == 20 * 10
        assert (m["lost"], m["duplicates"], m["out_of_order"]) == (0, 0, 0)
        assert m["unacked_delivered"] == 0
        assert not m["unexpected_closes"]
        assert m["lat_samples"] == 20 * 10
        assert "server_kernel_share_pct" in m
        assert "pin" not in run
    assert "fanout-20x10" in results["summary"]
    text = docs.read_text()
    assert "fanout-20x10" in text and "service-embedded" in text
    assert "| uvicorn-asgi |" in text and "**uvicorn-asgi** (opt-in)" in text
    disk = results["meta"]["machine"]["disk_sync"]
    assert disk["syncs"] > 0 and disk["max_ms"] >= disk["p99_ms"] >= disk["p50_ms"] > 0
    assert f"{disk['syncs']:,} syncs" in text


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs 2 CPUs or more")
def test_bench_pinned_tiny(tmp_path: Path) -> None:
    """--pin puts the server on the first CPU and the load generator on the others, as read
    back from the processes, and names the variant …-pinned."""
    docs = tmp_path / "BENCHMARKS.md"
    run = tiny_run(tmp_path, "fanout", "--fanout", "10x5", "--pin", target="websockets", docs=docs)
    assert run["variant"] == "fanout-10x5-pinned"
    assert run["metrics"]["deliveries"] == 10 * 5 and run["metrics"]["lost"] == 0
    cpus = sorted(os.sched_getaffinity(0))
    assert run["pin"] == {"server_cpus": cpus[:1], "generator_cpus": cpus[1:]}
    text = docs.read_text()
    assert "### fanout-10x5-pinned" in text
    assert f"the server on CPU {cpus[0]}, the load generator on CPU" in text


def tiny_run(
    tmp_path: Path,
    scenario: str,
    *options: str,
    target: str = "service-embedded",
    docs: Path | None = None,
) -> dict[str, Any]:
    """One run of `scenario` on `target` at a tiny size (`options`: the scenario's size option
    and value, and any other), one generator process, the docs rendered to `docs` if given;
    its record from the results file."""
    results_dir = tmp_path / "results"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--quick",
        "--scenarios",
        scenario,
        "--targets",
        target,
        *options,
        "--repeats",
        "1",
        "--workers",
        "1",
        "--results-dir",
        str(results_dir),
        *(["--no-docs"] if docs is None else ["--docs", str(docs)]),
        "--no-plots",
        "--time-limit",
        "50",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (written,) = results_dir.glob("*.json")
    (run,) = json.loads(written.read_text())["runs"]
    assert "error" not in run, run.get("error")
    return dict(run)


def test_bench_marks_tiny(tmp_path: Path) -> None:
    """The marks scenario: every delivery marked read and answered, and the marks stored for
    the sampled users read back over REST equal to the highest each was acked."""
    run = tiny_run(tmp_path, "marks", "--marks", "20,5,50,1")
    assert run["variant"] == "marks-4x5-50ps"
    m = run["metrics"]
    assert m["acked"] == 50 and m["deliveries"] == 50 * 5
    assert m["marks_sent"] == m["marks_acked"] == m["deliveries"]
    assert (m["marks_unanswered"], m["marks_mismatched"], m["marks_refused"]) == (0, 0, {})
    assert m["marks_checked"] == 20, "every user's stored mark read back"
    assert m["mark_samples"] == m["marks_acked"]


def test_bench_notify_tiny(tmp_path: Path) -> None:
    """The notify scenario: every user gets every push once, in order, latencies recorded."""
    run = tiny_run(tmp_path, "notify", "--notify", "20,3")
    assert run["variant"] == "notify-20x3"
    m = run["metrics"]
    assert (m["connections"], m["pushes"], m["deliveries"]) == (20, 3, 60)
    assert (m["lost"], m["duplicates"], m["out_of_order"]) == (0, 0, 0)
    assert m["lat_samples"] == 60 and m["push_samples"] == 3
    assert not m["unexpected_closes"] and not m["server_errors"]
