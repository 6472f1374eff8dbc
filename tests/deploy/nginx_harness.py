"""Run the project's nginx config (nginx/nginx.conf.template) in front of local upstreams.

    from tests.deploy.nginx_harness import free_port, nginx_proxy, require_tool

    require_tool("nginx")
    with nginx_proxy(["127.0.0.1:9001", "127.0.0.1:9002"], tls=True) as proxy:
        httpx.get(f"{proxy.http_url}/health")
        httpx.get(f"{proxy.https_url}/health", verify=proxy.client_ssl_context())

nginx runs as `nginx -p WORKDIR -c WORKDIR/nginx.conf -g 'daemon off;'` with its pid
file, logs and temp directories inside WORKDIR, listening on 127.0.0.1 only. It is
stopped with SIGQUIT (graceful), then SIGTERM, then SIGKILL of its process group.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO_ROOT / "nginx"
LOCALHOST = "127.0.0.1"

# Debian package that provides each external tool used by tests/deploy.
TOOL_PACKAGES = {"nginx": "nginx", "promtool": "prometheus", "openssl": "openssl"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def find_tool(name: str) -> str | None:
    """Path of `name` on PATH, or in the sbin directories (Debian puts nginx there)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def require_tool(name: str) -> str:
    """Path of `name` (see find_tool). Missing: skip the test, or fail it when CI=true."""
    import pytest

    path = find_tool(name)
    if path:
        return path
    reason = f"{name} not found on PATH (Debian package: {TOOL_PACKAGES.get(name, name)})"
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _load(module: str) -> ModuleType:
    """Import nginx/<module>.py by path (nginx/ is not a package)."""
    path = NGINX_DIR / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"campushub_nginx_{module}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def render_module() -> ModuleType:
    """nginx/render.py: render(**params) -> str, fill(template, values) -> str."""
    return _load("render")


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def make_self_signed_cert(
    directory: Path, hosts: Sequence[str] = ("localhost", LOCALHOST)
) -> tuple[Path, Path]:
    """Write directory/tls.crt and directory/tls.key, valid for `hosts`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    _load("selfsigned_cert").generate(cert, key, hosts=hosts)
    return cert, key


def client_ssl_context(cert: Path) -> ssl.SSLContext:
    """Client context that trusts exactly this self-signed certificate."""
    return ssl.create_default_context(cafile=str(cert))


@dataclass(frozen=True)
class NginxProxy:
    workdir: Path
    config_path: Path
    listen_port: int
    tls_port: int | None
    cert: Path | None
    process: subprocess.Popen[bytes]
    host: str = LOCALHOST

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.listen_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.listen_port}/ws"

    @property
    def https_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this nginx has no TLS listener")
        return f"https://{self.host}:{self.tls_port}"

    @property
    def wss_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this nginx has no TLS listener")
        return f"wss://{self.host}:{self.tls_port}/ws"

    def client_ssl_context(self) -> ssl.SSLContext:
        if self.cert is None:
            raise RuntimeError("this nginx has no TLS listener")
        return client_ssl_context(self.cert)

    def error_log(self) -> str:
        return _read(self.workdir / "logs" / "error.log")

    def access_log(self) -> str:
        return _read(self.workdir / "logs" / "access.log")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def write_config(
    workdir: Path,
    upstreams: Sequence[str],
    listen_port: int,
    *,
    tls_port: int | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    balancing: str = "ip_hash",
    listen_host: str = LOCALHOST,
) -> Path:
    """Render nginx.conf into workdir (with logs/ and temp/ beside it); return its path."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    (workdir / "temp").mkdir(parents=True, exist_ok=True)
    if tls_port is not None and (cert is None or key is None):
        raise ValueError("a TLS port needs cert and key")
    text = render_module().render(
        listen_port=listen_port,
        tls_port=tls_port,
        upstreams=list(upstreams),
        cert=cert or "unused.crt",
        key=key or "unused.key",
        pid=workdir / "nginx.pid",
        error_log=workdir / "logs" / "error.log",
        access_log=workdir / "logs" / "access.log",
        temp_dir=workdir / "temp",
        user=None,
        worker_processes=1,
        listen_host=listen_host,
        balancing=balancing,
    )
    config_path = workdir / "nginx.conf"
    config_path.write_text(text, encoding="utf-8")
    return config_path


def nginx_command(nginx: str, workdir: Path, config_path: Path, *extra: str) -> list[str]:
    return [
        nginx,
        "-p",
        f"{workdir}/",
        "-e",
        str(workdir / "logs" / "error.log"),
        "-c",
        str(config_path),
        *extra,
    ]


def check_config(workdir: Path, config_path: Path, nginx: str = "nginx") -> None:
    """`nginx -t` on a rendered config; raises AssertionError with nginx's output."""
    result = subprocess.run(
        nginx_command(nginx, workdir, config_path, "-t"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"nginx -t failed ({result.returncode}):\n{result.stderr}")


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_matches(pid_file: Path, pid: int) -> bool:
    try:
        return int(pid_file.read_text(encoding="ascii").strip() or 0) == pid
    except (FileNotFoundError, ValueError):
        return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Graceful quit, then fast shutdown, then SIGKILL of nginx's own process group."""
    pgid = process.pid  # started with start_new_session=True: its own group
    for sig, wait in ((signal.SIGQUIT, grace), (signal.SIGTERM, 3.0)):
        if process.poll() is not None:
            break
        process.send_signal(sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        _signal_group(pgid, signal.SIGKILL)
        process.wait(timeout=5)
    # Workers outliving a killed master: end them too (same group, started by us).
    deadline = time.monotonic() + 3.0
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)


@contextmanager
def nginx_proxy(
    upstreams: Sequence[str],
    listen_port: int | None = None,
    *,
    tls: bool = False,
    tls_port: int | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    balancing: str = "ip_hash",
    startup_timeout: float = 10.0,
    workdir: Path | None = None,
    nginx: str | None = None,
) -> Iterator[NginxProxy]:
    """Start nginx in front of `upstreams` ("host:port" strings) and stop it afterwards.

    listen_port / tls_port default to free ports; tls=True (or a tls_port) adds the TLS
    listener, with a fresh self-signed certificate unless cert and key are given.
    balancing: "ip_hash" (as deployed: every 127.0.0.1 client lands on one upstream),
    "round_robin" or "least_conn" (to spread local test clients over the upstreams).
    Raises RuntimeError (with nginx's error log) if nginx exits or does not accept
    connections within startup_timeout seconds.
    """
    binary = nginx or find_tool("nginx")
    if binary is None:
        raise RuntimeError("nginx not found on PATH (Debian package: nginx)")
    own_dir = workdir is None
    base = Path(tempfile.mkdtemp(prefix="campushub-nginx-")) if workdir is None else workdir
    if own_dir:
        # Started as root, nginx's workers run as nobody: they need to reach temp/.
        base.chmod(0o755)
    try:
        listen_port = listen_port or free_port()
        if tls or tls_port is not None:
            tls_port = tls_port or free_port()
            if cert is None or key is None:
                cert, key = make_self_signed_cert(base / "tls")
        config_path = write_config(
            base,
            upstreams,
            listen_port,
            tls_port=tls_port,
            cert=cert,
            key=key,
            balancing=balancing,
        )
        ports = [listen_port] if tls_port is None else [listen_port, tls_port]
        with open(base / "logs" / "nginx.out", "wb") as output:
            process = subprocess.Popen(
                nginx_command(binary, base, config_path, "-g", "daemon off;"),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + startup_timeout
            # The pid file appears once nginx holds its listening sockets (a port that
            # accepts is not enough: another process may own it).
            pid_file = base / "nginx.pid"
            while not (
                _pid_matches(pid_file, process.pid)
                and all(_accepts(LOCALHOST, port) for port in ports)
            ):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"nginx exited with {process.returncode}:\n"
                        f"{_read(base / 'logs' / 'nginx.out')}{_read(base / 'logs' / 'error.log')}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"nginx did not accept on {ports} within {startup_timeout}s:\n"
                        f"{_read(base / 'logs' / 'error.log')}"
                    )
                time.sleep(0.05)
            yield NginxProxy(
                workdir=base,
                config_path=config_path,
                listen_port=listen_port,
                tls_port=tls_port,
                cert=cert,
                process=process,
            )
        finally:
            stop(process)
    finally:
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)
