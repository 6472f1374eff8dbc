"""The bench's CPU accounting: a process's CPU splits into user and kernel time, and the
window reports the kernel's share. Asserts where the time was spent, never how long."""

from __future__ import annotations

import subprocess
import sys

from bench.procstat import CpuWindow, cpu_times
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
