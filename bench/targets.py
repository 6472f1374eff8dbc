"""Start and stop the servers under test: the service (production or embedded mode) and the
two baselines. Every server is a child process listening on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

TARGETS = ("service-prod", "service-embedded", "websockets", "fastapi")
BASELINES = ("websockets", "fastapi")
# Run only when asked for (--targets …,uvicorn-asgi): uvicorn's cost without a framework.
OPTIONAL_TARGETS = ("uvicorn-asgi",)
BASELINE_SCRIPTS = {
    "websockets": "ws_broadcast.py",
    "fastapi": "fastapi_manager.py",
    "uvicorn-asgi": "uvicorn_asgi.py",
}

# Limits raised for load tests (SPEC §8 names).
LOAD_ENV = {
    "WS_CONNECT_RATE_PER_IP": "1000000",
    "RATE_LIMIT_MESSAGES_PER_SECOND": "100000",
    "RATE_LIMIT_BURST": "100000",
    "WS_MAX_CONNECTIONS": "20000",
    "WS_SEND_QUEUE": "4096",
}


def app_revision() -> dict[str, str]:
    """The commit, whether app/ differs from it, and a digest of app/ as it is now (the
    service under test is edited concurrently: a change between runs shows up here)."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted((ROOT / "app").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".ini", ".json"):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    out = {"app_digest": digest.hexdigest()[:12]}
    try:
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app", "alembic"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        out["app_uncommitted_files"] = str(sum(1 for line in dirty if line.strip()))
    except OSError:
        pass
    return out


def is_service(name: str) -> bool:
    return name.startswith("service")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    target: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    command: list[str]
    env_shown: dict[str, str]
    log_offset: int = 0
    revision: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0


@dataclass
class Environment:
    """Session resources shared by the servers: Postgres database, Redis db, temp dir."""

    tmpdir: Path
    secret: str
    pg_admin: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    pg_data_directory: str | None = None
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 11
    keep_db: bool = False
    db_name: str | None = None
    service_overrides: dict[str, str] = field(default_factory=dict)
    server_cpus: set[int] | None = None  # `--pin`: every server process on these CPUs
    commands: list[str] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        assert self.db_name is not None
        base = self.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{self.db_name}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    # -- Postgres and Redis ------------------------------------------------------------------

    async def create_database(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        self.db_name = f"campushub_bench_{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}"
        conn = await asyncpg.connect(self.pg_admin)
        try:
            await conn.execute(f'CREATE DATABASE "{self.db_name}"')
        finally:
            await conn.close()
        env = self.service_env("service-prod")
        cmd = [sys.executable, "-m", "app", "migrate"]
        shown = shlex.join(["python", *cmd[1:]])
        self.commands.append(f"DATABASE_URL={self.database_url} {shown}")
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            env=env,
            cwd=str(self.tmpdir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"migrate failed: {out.decode()[-2000:]}")

    async def drop_database(self) -> None:
        if self.db_name is None or self.keep_db:
            return
        import asyncpg

        conn = await asyncpg.connect(self.pg_admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def flush_redis(self) -> None:
        import redis.asyncio as redis

        client = redis.Redis(host=self.redis_host, port=self.redis_port, db=self.redis_db)
        try:
            await client.flushdb()
        finally:
            await client.aclose()

    async def server_versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        with contextlib.suppress(Exception):
            import asyncpg

            conn = await asyncpg.connect(self.pg_admin)
            try:
                out["postgres-server"] = str(await conn.fetchval("SHOW server_version"))
                with contextlib.suppress(Exception):  # superusers only
                    self.pg_data_directory = str(await conn.fetchval("SHOW data_directory"))
            finally:
                await conn.close()
        with contextlib.suppress(Exception):
            import redis.asyncio as redis

            client = redis.Redis(host=self.redis_host, port=self.redis_port)
            try:
                out["redis-server"] = str((await client.info("server"))["redis_version"])
            finally:
                await client.aclose()
        return out

    # -- servers -----------------------------------------------------------------------------

    def service_env(self, target: str, heartbeat: float = 30.0) -> dict[str, str]:
        from app.config import Settings

        env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
        env.update(LOAD_ENV)
        env["JWT_SECRET"] = self.secret
        env["PYTHONPATH"] = str(ROOT)
        env["WS_HEARTBEAT_INTERVAL"] = str(heartbeat)
        env["WS_READ_TIMEOUT"] = str(max(60.0, heartbeat * 2))
        if target == "service-prod":
            env["DATABASE_URL"] = self.database_url
            env["REDIS_URL"] = self.redis_url
        env.update(self.service_overrides)
        return env

    async def start(self, target: str, *, heartbeat: float = 30.0, tag: str = "") -> Server:
        port = free_port()
        log_path = self.tmpdir / f"{target}{tag}-{port}.log"
        shown: dict[str, str] = {}
        if is_service(target):
            env = self.service_env(target, heartbeat)
            if target == "service-embedded":
                db = self.tmpdir / f"embedded{tag}-{port}.db"
                env["SQLITE_PATH"] = str(db)
            cmd = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
            shown = {
                k: env[k]
                for k in sorted(env)
                if k in _SHOWN or k.startswith("WS_") or k in self.service_overrides
            }
        else:
            env = dict(os.environ)
            env["PYTHONPATH"] = str(ROOT)
            script = BASELINE_SCRIPTS[target]
            cmd = [
                sys.executable,
                str(BENCH / "baselines" / script),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--secret",
                self.secret,
                "--ping-interval",
                str(heartbeat),
            ]
        log = open(log_path, "wb")  # handed to the child
        proc = subprocess.Popen(
            cmd,
            cwd=str(self.tmpdir),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        if self.server_cpus is not None:
            # At once, while the new interpreter is still starting (no other thread yet: the
            # ones it starts inherit this); each run records what all its threads have.
            os.sched_setaffinity(proc.pid, self.server_cpus)
        server = Server(target, port, proc, log_path, cmd, shown)
        if is_service(target):
            server.revision = app_revision()
        self.servers.append(server)
        try:
            await wait_ready(server, http=is_service(target))
        except Exception:
            await self.stop(server)
            raise
        server.log_offset = server.log_size()
        return server

    async def stop(self, server: Server, timeout: float = 15.0) -> None:
        proc = server.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if server in self.servers:
            self.servers.remove(server)

    async def stop_all(self) -> None:
        for server in list(self.servers):
            await self.stop(server)


_SHOWN = {"DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "JWT_SECRET"} | set(LOAD_ENV)


async def wait_ready(server: Server, *, http: bool, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.target} exited with {server.proc.returncode}:\n"
                + server.log_tail_since(0)[-3000:]
            )
        try:
            if http:
                import httpx

                async with httpx.AsyncClient(timeout=1) as client:
                    r = await client.get(f"http://127.0.0.1:{server.port}/ready")
                    if r.status_code == 200:
                        return
            else:
                _, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.close()
                return
        except (OSError, Exception):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.target} not ready after {timeout}s")


def describe_command(server: Server) -> str:
    env = " ".join(f"{k}={v}" for k, v in server.env_shown.items())
    cmd = [Path(server.command[0]).name if i == 0 else c for i, c in enumerate(server.command)]
    cmd = ["python" if i == 0 else c for i, c in enumerate(cmd)]
    text = shlex.join(cmd)
    for token in (str(ROOT) + "/",):
        text = text.replace(token, "")
    return (env + " " + text).strip()
