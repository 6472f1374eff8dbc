"""CPU time, RSS and machine facts from /proc (no psutil)."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a process, its threads included (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (None when it is gone)."""
    times = cpu_times(pid)
    return None if times is None else times[0] + times[1]


def process_cpus(pid: int) -> list[int]:
    """The CPUs any thread of a process may run on (each thread has its own affinity)."""
    cpus: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            cpus |= os.sched_getaffinity(int(tid))
    return sorted(cpus)


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle + iowait
    total = sum(parts[:8])
    return total - idle, total


def parse_pressure(text: str) -> int:
    """Microseconds in which some task waited (the `some ... total=` line of a
    /proc/pressure file: Linux's pressure stall information)."""
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "total":
                    return int(value)
    raise ValueError(f"no 'some' total in {text!r}")


def pressure_totals() -> dict[str, int] | None:
    """{"io": µs, "cpu": µs} of stall since boot (some task waiting for the disk, or for a
    CPU), or None where the kernel does not report pressure."""
    out: dict[str, int] = {}
    for resource_name in ("io", "cpu"):
        try:
            with open(f"/proc/pressure/{resource_name}") as f:
                out[resource_name] = parse_pressure(f.read())
        except (OSError, ValueError):
            return None
    return out


SIDE_PROCESSES = (b"postgres", b"redis-server")


def side_cpu() -> dict[int, float]:
    """CPU seconds of every Postgres and Redis process (the machine's, others' use included)."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in SIDE_PROCESSES:
            cpu = cpu_seconds(int(entry))
            if cpu is not None:
                out[int(entry)] = cpu
    return out


@dataclass
class CpuWindow:
    """CPU use of some processes (and of the whole machine) between start() and stop()."""

    pids: dict[str, int]

    def start(self) -> None:
        self._t0 = os.times().elapsed
        self._c0 = {k: cpu_times(p) for k, p in self.pids.items()}
        self._m0 = machine_ticks()
        self._side0 = side_cpu()
        self._p0 = pressure_totals()

    def stop(self) -> dict[str, float | None]:
        wall = os.times().elapsed - self._t0
        out: dict[str, float | None] = {"wall_s": round(wall, 3)}
        for key, pid in self.pids.items():
            c0, c1 = self._c0.get(key), cpu_times(pid)
            if c0 is None or c1 is None or wall <= 0:
                out[key] = out[f"{key}_kernel"] = None
                continue
            # Percent of one core, and the part of it spent in the kernel (system time).
            out[key] = 100 * (c1[0] + c1[1] - c0[0] - c0[1]) / wall
            out[f"{key}_kernel"] = 100 * (c1[1] - c0[1]) / wall
        side1 = side_cpu()
        side = sum(c - self._side0.get(pid, 0.0) for pid, c in side1.items())
        out["postgres_redis_pct"] = 100 * side / wall if wall > 0 else None
        busy1, total1 = machine_ticks()
        dbusy, dtotal = busy1 - self._m0[0], total1 - self._m0[1]
        out["machine_busy_pct"] = 100 * dbusy / dtotal if dtotal > 0 else None
        # Share of the window in which some task on the machine waited for the disk (a slow
        # sync holds every commit behind it) or for a CPU.
        p0, p1 = self._p0, pressure_totals()
        for name in ("io", "cpu"):
            stalled = p1[name] - p0[name] if p0 is not None and p1 is not None else None
            out[f"{name}_pressure_pct"] = (
                100 * stalled / (wall * 1e6) if stalled is not None and wall > 0 else None
            )
        return out


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft)


def machine_info() -> dict[str, object]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def disk_sync_probe(directory: str, seconds: float) -> dict[str, object]:
    """What a commit waits for: 8 KiB written and fdatasync'd, over and over for `seconds`,
    in a file in `directory` (the bench's temp directory; the run records whether it is on
    the Postgres data directory's file system).

    One slow sync holds every commit made meanwhile, whatever the service does."""
    import tempfile
    import time

    lat: list[float] = []
    fd, path = tempfile.mkstemp(prefix=".bench-sync-", dir=directory)
    try:
        block = b"x" * 8192
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            os.pwrite(fd, block, (i % 1024) * 8192)
            i += 1
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    n = len(lat)
    return {
        "directory": directory,
        "seconds": seconds,
        "syncs": n,
        "p50_ms": round(lat[n // 2], 3) if n else None,
        "p99_ms": round(lat[min(n - 1, int(n * 0.99))], 3) if n else None,
        "max_ms": round(lat[-1], 1) if n else None,
        "over_50ms": sum(1 for x in lat if x > 50),
    }
