"""`make cluster`: N instances on local Postgres + Redis behind nginx on :8889, no Docker.

Ctrl-C stops everything. Environment: DATABASE_URL (default: local Postgres database
`campushub`, created if missing), REDIS_URL (default redis://127.0.0.1:6379/0),
JWT_SECRET (required), INSTANCES (default 2), PORT (nginx, default 8889).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nginx.render import render  # noqa: E402


async def ensure_database(url: str) -> None:
    import asyncpg

    parts = urlsplit(url.replace("+asyncpg", ""))
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    conn = await asyncpg.connect(admin)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")
    finally:
        await conn.close()


def wait_healthy(ports: list[int], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    for p in ports:
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{p}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"instance on :{p} did not come up")


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/campushub")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setdefault("TRUSTED_PROXIES", "127.0.0.1")
    if not env.get("JWT_SECRET"):
        print("set JWT_SECRET (at least 16 characters) first", file=sys.stderr)
        return 2
    count = int(env.get("INSTANCES", "2"))
    port = int(env.get("PORT", "8889"))
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        print("nginx not found: apt-get install nginx", file=sys.stderr)
        return 2
    asyncio.run(ensure_database(env["DATABASE_URL"]))
    subprocess.run([sys.executable, "-m", "app", "migrate"], env=env, cwd=ROOT, check=True)

    procs: list[subprocess.Popen[bytes]] = []
    ports = [port + 1 + i for i in range(count)]
    for p in ports:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(p)],
                env=env,
                cwd=ROOT,
            )
        )
    work = Path(tempfile.mkdtemp(prefix="campushub-nginx-"))
    (work / "temp").mkdir()
    conf = work / "nginx.conf"
    conf.write_text(
        render(
            listen_port=port,
            tls_port=None,
            upstreams=[f"127.0.0.1:{p}" for p in ports],
            pid=work / "nginx.pid",
            error_log=work / "error.log",
            access_log=work / "access.log",
            temp_dir=work / "temp",
            user=None,
            worker_processes=1,
        )
    )
    wait_healthy(ports)
    procs.append(subprocess.Popen([nginx, "-p", str(work), "-c", str(conf), "-g", "daemon off;"]))
    print(f"cluster: nginx on :{port} → instances on {', '.join(map(str, ports))}; Ctrl-C stops")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
