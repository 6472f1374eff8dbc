"""The bench's CPU accounting: a process's CPU splits into user and kernel time, and the
window reports the kernel's share. Asserts where the time was spent, never how long."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.procstat import CpuWindow, cpu_times, parse_pressure, pressure_totals, process_cpus
from bench.scenarios import cpu_metrics

# Each child spins until it has used 0.4 s of CPU, says so, and waits for its stdin to close:
# one in the kernel (the kernel fills a 1 MiB buffer from /dev/zero on every read), one in
# the interpreter (arithmetic).
KERNEL_WORK = """
import sys, time
buf = bytearray(1 << 20)
with open("/dev/zero", "rb", buffering=0) as f:
    while time.process_time() < 0.4:
        f.readinto(buf)
print("done", flush=True)
sys.stdin.read()
"""
USER_WORK = """
import sys, time
x = 0
while time.process_time() < 0.4:
    for i in range(10000):
        x += i * i
print("done", flush=True)
sys.stdin.read()
"""


def _measure(code: str) -> dict[str, object]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        window = CpuWindow({"server0": proc.pid})
        window.start()
        assert proc.stdout.readline().strip() == "done"  # the child still exists: stop now
        return cpu_metrics(window.stop(), 1, 0)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_kernel_share_follows_where_the_cpu_went() -> None:
    in_kernel = _measure(KERNEL_WORK)
    in_user = _measure(USER_WORK)
    assert isinstance(in_kernel["server_kernel_share_pct"], float)
    assert isinstance(in_user["server_kernel_share_pct"], float)
    assert in_kernel["server_kernel_share_pct"] > 50
    assert in_user["server_kernel_share_pct"] < 50
    assert in_kernel["server_cpu_pct"] > 0 and in_user["server_cpu_pct"] > 0


def test_cpu_times_of_a_gone_process_is_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert cpu_times(proc.pid) is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs or more")
def test_process_cpus_reads_every_thread_back() -> None:
    """A process reports the CPUs of all of its threads: one thread left unpinned counts."""
    everywhere = sorted(os.sched_getaffinity(0))
    cpu = everywhere[0]
    code = (
        "import sys, threading; t = threading.Thread(target=sys.stdin.read); t.start();"
        " print('ready', flush=True); t.join()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert len(os.listdir(f"/proc/{proc.pid}/task")) == 2
        assert process_cpus(proc.pid) == everywhere
        os.sched_setaffinity(proc.pid, {cpu})  # the main thread only
        assert process_cpus(proc.pid) == everywhere
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            os.sched_setaffinity(int(tid), {cpu})
        assert process_cpus(proc.pid) == [cpu]
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_pressure_totals_are_read_from_the_some_line() -> None:
    text = (
        "some avg10=19.07 avg60=7.01 avg300=5.04 total=215023062\n"
        "full avg10=14.90 avg60=5.52 avg300=4.34 total=177452165\n"
    )
    assert parse_pressure(text) == 215023062
    with pytest.raises(ValueError):
        parse_pressure("full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n")


def test_more_busy_processes_than_cores_show_as_cpu_pressure() -> None:
    """Three more spinning children than the machine has cores: tasks wait for a CPU most of
    the window, and the window says so (where the kernel reports pressure at all)."""
    spin = "import time\nwhile time.process_time() < 0.6:\n    pass\n"
    window = CpuWindow({})
    window.start()
    children = [
        subprocess.Popen([sys.executable, "-c", spin]) for _ in range((os.cpu_count() or 1) + 3)
    ]
    for child in children:
        child.wait(timeout=60)
    metrics = cpu_metrics(window.stop(), 0, 0)
    if pressure_totals() is None:
        assert metrics["cpu_pressure_pct"] is None and metrics["io_pressure_pct"] is None
        return
    assert isinstance(metrics["cpu_pressure_pct"], float)
    assert isinstance(metrics["io_pressure_pct"], float)
    assert metrics["cpu_pressure_pct"] > 20
    assert 0 <= metrics["io_pressure_pct"] <= 100
