"""Checks of the deployment files: docker-compose.yml, Dockerfile, nginx/, deploy/k8s/,
deploy/prometheus/ (SPEC §10).

External tools: promtool (Debian package prometheus) and nginx (Debian package nginx).
A test that needs a missing tool is skipped, or fails when CI=true.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import re
import shlex
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .nginx_harness import (
    REPO_ROOT,
    check_config,
    client_ssl_context,
    free_port,
    make_self_signed_cert,
    nginx_proxy,
    render_module,
    require_tool,
    write_config,
)

COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
NGINX_CONF = REPO_ROOT / "nginx" / "nginx.conf"
K8S = REPO_ROOT / "deploy" / "k8s"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO_ROOT / "deploy" / "prometheus" / "alerts_test.yml"
APP_PORT = 8889
TIMEOUT = httpx.Timeout(5.0)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|:?\?[^}]*)?\}")


def _compose_default(value: str) -> str:
    """A compose string as interpolated with its variables unset: ${VAR:-default} gives
    the default, ${VAR} and ${VAR:?error} give "" (compose itself would stop at :?)."""
    return _INTERPOLATION.sub(lambda match: match.group(3) or "", value)


# --- docker-compose.yml ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE)
    assert isinstance(data, dict) and "services" in data
    return data


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service = compose["services"][name]
    assert isinstance(service, dict)
    return service


def _depends(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    assert isinstance(depends, dict), "depends_on must use the long form with conditions"
    return {name: spec["condition"] for name, spec in depends.items()}


def _healthcheck_text(service: dict[str, Any]) -> str:
    check = service.get("healthcheck")
    assert check and not check.get("disable"), "service needs a healthcheck"
    test = check["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def test_compose_has_the_cluster_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "migrate", "app1", "app2", "nginx"):
        assert name in services, name
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["nginx"]["image"].startswith("nginx:1.27")
    images = {services[name]["image"] for name in ("migrate", "app1", "app2")}
    assert len(images) == 1, "migrate and the app instances must run the same image"
    assert all("build" in services[name] for name in ("migrate", "app1", "app2"))
    assert "version" not in compose, "the top-level version key is obsolete"


def test_compose_healthchecks(compose: dict[str, Any]) -> None:
    assert "pg_isready" in _healthcheck_text(_service(compose, "postgres"))
    redis_check = _healthcheck_text(_service(compose, "redis"))
    assert "redis-cli" in redis_check and "ping" in redis_check
    for name in ("app1", "app2"):
        check = _healthcheck_text(_service(compose, name))
        assert "/ready" in check and str(APP_PORT) in check, name
        assert "curl" not in check, "python:3.11-slim has no curl"
    assert "/health" in _healthcheck_text(_service(compose, "nginx"))


def test_compose_start_order(compose: dict[str, Any]) -> None:
    migrate = _service(compose, "migrate")
    assert migrate["command"] == ["python", "-m", "app", "migrate"]
    assert migrate.get("restart") == "no"
    assert _depends(migrate)["postgres"] == "service_healthy"
    for name in ("app1", "app2"):
        depends = _depends(_service(compose, name))
        assert depends["migrate"] == "service_completed_successfully", name
        assert depends["redis"] == "service_healthy", name
        assert depends["postgres"] == "service_healthy", name
    nginx = _depends(_service(compose, "nginx"))
    assert nginx["app1"] == nginx["app2"] == "service_healthy"
    for name, condition in nginx.items():
        if condition == "service_completed_successfully":
            assert compose["services"][name].get("restart") == "no", name


def test_compose_nginx_ports_config_and_upstreams(compose: dict[str, Any]) -> None:
    nginx = _service(compose, "nginx")
    ports = [str(port) for port in nginx["ports"]]
    assert "8889:80" in ports
    assert any(port.endswith(":443") for port in ports)
    mounts = {str(volume).split(":")[1]: str(volume).split(":")[0] for volume in nginx["volumes"]}
    assert mounts["/etc/nginx/nginx.conf"] == "./nginx/nginx.conf"
    # The certificate directory nginx reads is filled before it starts.
    cert_dir = str(Path(render_module().DEFAULT_CERT).parent)
    assert cert_dir in mounts
    producers = [
        name
        for name, service in compose["services"].items()
        if name != "nginx"
        and any(str(v).split(":")[0] == mounts[cert_dir] for v in service.get("volumes", []))
    ]
    assert producers and all(_depends(nginx).get(name) for name in producers)

    servers = re.findall(r"^\s*server\s+(\S+);", NGINX_CONF.read_text(encoding="utf-8"), re.M)
    apps = sorted(name for name in compose["services"] if re.fullmatch(r"app\d+", name))
    assert sorted(servers) == [f"{name}:{APP_PORT}" for name in apps]


def test_compose_app_environment(compose: dict[str, Any]) -> None:
    for name in ("migrate", "app1", "app2"):
        env = _service(compose, name)["environment"]
        assert isinstance(env, dict), name
        assert env["JWT_SECRET"].startswith("${JWT_SECRET:?"), "JWT_SECRET must be required"
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:6379")

    # The apps trust exactly nginx's fixed address on the project network.
    nginx_ip = _compose_default(_service(compose, "nginx")["networks"]["default"]["ipv4_address"])
    trusted = _compose_default(_service(compose, "app1")["environment"]["TRUSTED_PROXIES"])
    assert trusted.split(",") == [nginx_ip]
    subnet = _compose_default(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(nginx_ip) in ipaddress.ip_network(subnet)


def test_compose_matches_the_compose_spec() -> None:
    """Optional: needs check-jsonschema (it ships the compose-spec schema)."""
    pytest.importorskip("check_jsonschema", reason="optional: pip install check-jsonschema")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
        + [str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_interpolation_helper() -> None:
    assert _compose_default("${A:-x}-${B:?must}-c") == "x--c"


# --- Dockerfile -----------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _dockerfile_stages() -> list[Stage]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append(Stage(base=args.split()[0]))
        else:
            assert stages, f"instruction before FROM: {line}"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def test_dockerfile_runtime_stage() -> None:
    stages = _dockerfile_stages()
    assert stages and all(stage.base.startswith("python:3.11-slim") for stage in stages)
    final = stages[-1]
    users = final.all("USER")
    assert users, "the runtime stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert str(APP_PORT) in " ".join(final.all("EXPOSE")).split()
    (healthcheck,) = final.all("HEALTHCHECK")
    assert "/health" in healthcheck and "python" in healthcheck and "curl" not in healthcheck
    (cmd,) = final.all("CMD")
    assert json.loads(cmd) == ["python", "-m", "app", "serve"]
    copies = " ".join(final.all("COPY"))
    assert "alembic.ini" in copies and re.search(r"\balembic\s", copies)


def test_dockerfile_installs_project_with_uvloop_and_httptools() -> None:
    runs = " ".join(args for stage in _dockerfile_stages() for args in stage.all("RUN"))
    install = re.search(r"pip install ([^&;]*)", runs)
    assert install, "the project is installed with pip"
    packages = shlex.split(install.group(1))
    assert "." in packages and "uvloop" in packages and "httptools" in packages


def test_dockerignore_keeps_secrets_out_and_build_inputs_in() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".env", ".venv"} <= patterns
    for needed in ("pyproject.toml", "README.md", "app", "alembic", "alembic.ini"):
        assert needed not in patterns, needed


# --- nginx -----------------------------------------------------------------------------------


def _block(text: str, header: str) -> str:
    """Body of the first `header { ... }` block (braces balanced)."""
    start = text.index(header)
    depth = 0
    for index in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start : index + 1]
    raise AssertionError(f"unbalanced block {header!r}")


def _directives(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_committed_nginx_conf_is_the_default_rendering() -> None:
    assert NGINX_CONF.read_text(encoding="utf-8") == render_module().render(), (
        "nginx/nginx.conf is out of date: python nginx/render.py -o nginx/nginx.conf"
    )


def test_nginx_conf_websocket_proxying() -> None:
    conf = _directives(NGINX_CONF.read_text(encoding="utf-8"))
    upstream = _block(conf, "upstream campushub")
    assert "ip_hash;" in upstream
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{[^}]*default\s+upgrade;", conf)
    server = _block(conf, "server {")
    assert re.search(r"listen 80 default_server;", server)
    assert re.search(r"listen 443 ssl", server)
    assert "ssl_certificate     /etc/nginx/certs/tls.crt;" in server
    for header in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade           $http_upgrade;",
        "proxy_set_header Connection        $connection_upgrade;",
        "proxy_set_header X-Forwarded-For   $remote_addr;",
        "proxy_set_header X-Real-IP         $remote_addr;",
    ):
        assert header in server, header
    ws = _block(server, "location /ws")
    assert "proxy_pass http://campushub;" in ws
    assert "proxy_read_timeout 3600s;" in ws and "proxy_send_timeout 3600s;" in ws
    assert "proxy_set_header" not in ws, "would drop the server-level headers"
    assert "proxy_pass http://campushub;" in _block(server, "location = /health")


def test_render_parameters() -> None:
    render = render_module()
    text = render.render(
        listen_port=8080,
        tls_port=None,
        upstreams=["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"],
        pid="/tmp/x/nginx.pid",
        error_log="/tmp/x/error.log",
        access_log="/tmp/x/access.log",
        temp_dir="/tmp/x/temp",
        user=None,
        worker_processes=1,
        listen_host="127.0.0.1",
        balancing="round_robin",
    )
    conf = _directives(text)
    assert "listen 127.0.0.1:8080 default_server;" in conf
    assert "ssl" not in conf and "user " not in conf and "ip_hash" not in conf
    assert re.findall(r"server (\S+);", conf) == [
        "127.0.0.1:9001",
        "127.0.0.1:9002",
        "127.0.0.1:9003",
    ]
    assert (
        "pid /tmp/x/nginx.pid;" in conf and "proxy_temp_path       /tmp/x/temp/proxy_temp;" in conf
    )
    assert "{{" not in text

    with_tls = render.render(tls_port=8443, cert="/c/a b.crt", key="/c/k.key", listen_host="::1")
    assert "listen [::1]:8443 ssl default_server;" in with_tls
    assert 'ssl_certificate     "/c/a b.crt";' in with_tls

    bad_params: list[dict[str, Any]] = [
        {"upstreams": []},
        {"upstreams": ["app1"]},
        {"upstreams": ["app1:8889; evil"]},
        {"cert": "/x;y"},
        {"listen_port": 0},
        {"balancing": "random"},
    ]
    for bad in bad_params:
        with pytest.raises(ValueError):
            render.render(**bad)
    with pytest.raises(KeyError):
        render.fill("a {{ missing }}", {})
    with pytest.raises(KeyError):
        render.fill("a", {"unused": "x"})
    assert render.fill("  {{ block }}\nb {{ x }}\n", {"block": "1;\n2;", "x": "y"}) == (
        "  1;\n  2;\nb y\n"
    )
    assert render.fill("a\n    {{ gone }}\nb\n", {"gone": ""}) == "a\nb\n"


def test_render_cli_check(tmp_path: Path) -> None:
    out = tmp_path / "nginx.conf"
    script = str(REPO_ROOT / "nginx" / "render.py")
    run = [sys.executable, script]
    subprocess.run([*run, "-o", str(out)], check=True, timeout=30)
    assert out.read_text(encoding="utf-8") == NGINX_CONF.read_text(encoding="utf-8")
    assert subprocess.run([*run, "--check", str(NGINX_CONF)], timeout=30).returncode == 0
    out.write_text("stale\n", encoding="utf-8")
    stale = subprocess.run([*run, "--check", str(out)], capture_output=True, timeout=30)
    assert stale.returncode == 1


def test_nginx_t_accepts_rendered_config() -> None:
    nginx = require_tool("nginx")
    with tempfile.TemporaryDirectory(prefix="campushub-nginx-t-") as name:
        workdir = Path(name)
        cert, key = make_self_signed_cert(workdir / "tls")
        for tls_port in (free_port(), None):
            config = write_config(
                workdir,
                ["127.0.0.1:9001", "127.0.0.1:9002"],
                free_port(),
                tls_port=tls_port,
                cert=cert,
                key=key,
            )
            check_config(workdir, config, nginx)


# A stdlib upstream that records what reached it.


@dataclass
class Upstream:
    name: str
    port: int
    requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _handler(upstream: Upstream) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            headers = {key.lower(): value for key, value in self.headers.items()}
            upstream.requests.append({"path": self.path, **headers})
            if self.path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                self._tunnel()
                return
            body = json.dumps({"status": "ok", "upstream": upstream.name}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _tunnel(self) -> None:
            """Answer 101, then echo one chunk of raw bytes back (no WebSocket framing)."""
            self.send_response(101, "Switching Protocols")
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.connection.settimeout(5)
            try:
                data = self.connection.recv(1024)
                self.connection.sendall(b"echo:" + data)
            except OSError:
                pass
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def upstream_servers(*names: str) -> Iterator[list[Upstream]]:
    servers: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []
    upstreams: list[Upstream] = []
    try:
        for name in names:
            upstream = Upstream(name=name, port=0)
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream))
            server.daemon_threads = True
            upstream.port = int(server.server_address[1])
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
            thread.start()
            servers.append((server, thread))
            upstreams.append(upstream)
        yield upstreams
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def test_nginx_harness_http_https_and_forwarded_headers() -> None:
    require_tool("nginx")
    with upstream_servers("a") as (upstream,), nginx_proxy([upstream.address], tls=True) as proxy:
        with httpx.Client(timeout=TIMEOUT) as client:
            plain = client.get(
                f"{proxy.http_url}/health", headers={"X-Forwarded-For": "203.0.113.9"}
            )
        assert plain.status_code == 200 and plain.json()["status"] == "ok"
        with httpx.Client(timeout=TIMEOUT, verify=proxy.client_ssl_context()) as client:
            tls = client.get(f"{proxy.https_url}/health")
        assert tls.status_code == 200 and tls.json()["upstream"] == "a"
        with httpx.Client(timeout=TIMEOUT) as client:
            metrics = client.get(f"{proxy.http_url}/metrics")
        assert metrics.status_code == 404  # answered by nginx, never proxied

        first, second = upstream.requests
        for seen, scheme in ((first, "http"), (second, "https")):
            assert seen["path"] == "/health"
            # The client's own X-Forwarded-For is replaced, not appended to.
            assert seen["x-forwarded-for"] == "127.0.0.1"
            assert seen["x-real-ip"] == "127.0.0.1"
            assert seen["x-forwarded-proto"] == scheme
            assert "upgrade" not in seen
        assert first["host"] == f"127.0.0.1:{proxy.listen_port}"
        process = proxy.process
    assert process.poll() is not None, "nginx must be stopped after the block"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", proxy.listen_port), 1):
        pass


def _upgrade_and_echo(sock: socket.socket, host: str) -> tuple[str, bytes]:
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed during the handshake: {head!r}"
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    sock.sendall(b"hello")
    echoed = rest
    while len(echoed) < len(b"echo:hello"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        echoed += chunk
    return head.decode("latin-1").split("\r\n", 1)[0], echoed


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_nginx_harness_tunnels_websocket_upgrade(scheme: str) -> None:
    require_tool("nginx")
    with upstream_servers("a") as (upstream,), nginx_proxy([upstream.address], tls=True) as proxy:
        port = proxy.listen_port if scheme == "ws" else proxy.tls_port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            if scheme == "wss":
                assert proxy.cert is not None
                context = client_ssl_context(proxy.cert)
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    status, echoed = _upgrade_and_echo(sock, f"127.0.0.1:{port}")
            else:
                status, echoed = _upgrade_and_echo(raw, f"127.0.0.1:{port}")
        assert status.startswith("HTTP/1.1 101"), status
        assert echoed == b"echo:hello"
        (seen,) = upstream.requests
        assert seen["upgrade"] == "websocket"
        assert seen["connection"].lower() == "upgrade"
        assert seen["x-forwarded-proto"] == ("http" if scheme == "ws" else "https")


def test_nginx_harness_balancing() -> None:
    require_tool("nginx")
    with upstream_servers("a", "b") as upstreams:
        addresses = [upstream.address for upstream in upstreams]
        with nginx_proxy(addresses) as proxy, httpx.Client(timeout=TIMEOUT) as client:
            sticky = {client.get(f"{proxy.http_url}/health").json()["upstream"] for _ in range(6)}
        assert len(sticky) == 1, "ip_hash keeps one client address on one instance"
        with (
            nginx_proxy(addresses, balancing="round_robin") as proxy,
            httpx.Client(timeout=TIMEOUT) as client,
        ):
            spread = {client.get(f"{proxy.http_url}/health").json()["upstream"] for _ in range(6)}
        assert spread == {"a", "b"}


def test_nginx_harness_reports_a_failed_start() -> None:
    require_tool("nginx")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with (
            pytest.raises(RuntimeError, match="nginx"),
            nginx_proxy(["127.0.0.1:9"], listen_port=port, startup_timeout=5),
        ):
            pass


def test_require_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian package: prometheus"):
        require_tool("promtool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_tool("promtool")


def test_self_signed_cert_serves_tls_for_localhost(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    assert key.stat().st_mode & 0o077 == 0, "the private key must not be group/world readable"
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = client_ssl_context(cert)
    assert client_context.verify_mode == ssl.CERT_REQUIRED and client_context.check_hostname


# --- Kubernetes ------------------------------------------------------------------------------

K8S_FILES = {
    "configmap.yaml": "ConfigMap",
    "secret.example.yaml": "Secret",
    "deployment.yaml": "Deployment",
    "service.yaml": "Service",
    "pdb.yaml": "PodDisruptionBudget",
    "migrate-job.yaml": "Job",
}
API_VERSIONS = {
    "ConfigMap": "v1",
    "Secret": "v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
    "Job": "batch/v1",
}


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    """kind -> the one manifest of that kind."""
    manifests: dict[str, dict[str, Any]] = {}
    for filename, kind in K8S_FILES.items():
        docs = [
            doc
            for doc in yaml.safe_load_all((K8S / filename).read_text(encoding="utf-8"))
            if doc is not None
        ]
        assert [doc["kind"] for doc in docs] == [kind], filename
        manifests[kind] = docs[0]
    return manifests


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec["containers"]
    assert isinstance(container, dict)
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for entry in container["ports"]:
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise AssertionError(f"no container port named {port!r}")


def _assert_non_root(pod_spec: dict[str, Any]) -> None:
    pod = pod_spec.get("securityContext", {})
    container = _container(pod_spec).get("securityContext", {})
    assert pod.get("runAsNonRoot") is True or container.get("runAsNonRoot") is True
    user = container.get("runAsUser", pod.get("runAsUser"))
    assert isinstance(user, int) and user > 0
    assert container.get("allowPrivilegeEscalation") is False


def test_k8s_manifests_are_namespace_free_and_well_formed(k8s: dict[str, dict[str, Any]]) -> None:
    for kind, manifest in k8s.items():
        assert manifest["apiVersion"] == API_VERSIONS[kind], kind
        assert manifest["metadata"]["name"].startswith("campushub-realtime"), kind
        assert "namespace" not in manifest["metadata"], f"{kind} must be namespace-free"


# The oldest Kubernetes minor these manifests are meant for, and the newest one known.
K8S_SCHEMA_VERSIONS = ("1.28.0", None)


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    """Optional: needs kubernetes-validate (bundled OpenAPI schemas, strict mode)."""
    validator = pytest.importorskip(
        "kubernetes_validate", reason="optional: pip install kubernetes-validate"
    )
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            for version in K8S_SCHEMA_VERSIONS:
                validator.validate(doc, version or validator.latest_version(), strict=True)


def test_k8s_deployment(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    template_labels = spec["template"]["metadata"]["labels"]
    assert _matches(spec["selector"]["matchLabels"], template_labels)
    pod = spec["template"]["spec"]
    container = _container(pod)
    assert container.get("command", ["python", "-m", "app", "serve"]) == [
        "python",
        "-m",
        "app",
        "serve",
    ]
    assert _port_number(container, "http") == APP_PORT
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _port_number(container, get["port"]) == APP_PORT, probe
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"memory"} <= set(
        resources["limits"]
    )
    # preStop keeps the pod serving while it leaves the endpoints; the grace period
    # must cover it plus the app's own shutdown.
    pre_stop = container["lifecycle"]["preStop"]
    command = pre_stop.get("exec", {}).get("command", [])
    sleep = int(command[-1]) if command[:1] == ["sleep"] else int(pre_stop["sleep"]["seconds"])
    assert 0 < sleep < pod["terminationGracePeriodSeconds"] - 5
    _assert_non_root(pod)
    env_from = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert env_from == {
        "configMapRef": k8s["ConfigMap"]["metadata"]["name"],
        "secretRef": k8s["Secret"]["metadata"]["name"],
    }


def test_k8s_service_affinity_and_selector(k8s: dict[str, dict[str, Any]]) -> None:
    service = k8s["Service"]["spec"]
    template = k8s["Deployment"]["spec"]["template"]
    assert service["sessionAffinity"] == "ClientIP"
    assert _matches(service["selector"], template["metadata"]["labels"])
    container = _container(template["spec"])
    for port in service["ports"]:
        assert _port_number(container, port["targetPort"]) == APP_PORT
    # The migration Job's pods must not receive Service traffic.
    job_labels = k8s["Job"]["spec"]["template"]["metadata"]["labels"]
    assert not _matches(service["selector"], job_labels)


def test_k8s_pdb_selects_the_deployment(k8s: dict[str, dict[str, Any]]) -> None:
    pdb = k8s["PodDisruptionBudget"]["spec"]
    deployment = k8s["Deployment"]["spec"]
    assert pdb["selector"]["matchLabels"] == deployment["selector"]["matchLabels"]
    assert _matches(pdb["selector"]["matchLabels"], deployment["template"]["metadata"]["labels"])
    if "maxUnavailable" in pdb:
        assert pdb["maxUnavailable"] == 1
    else:
        assert 1 <= pdb["minAvailable"] < deployment["replicas"]


def test_k8s_migrate_job(k8s: dict[str, dict[str, Any]]) -> None:
    job = k8s["Job"]["spec"]
    pod = job["template"]["spec"]
    container = _container(pod)
    assert container["command"] == ["python", "-m", "app", "migrate"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    deployment_container = _container(k8s["Deployment"]["spec"]["template"]["spec"])
    assert container["image"] == deployment_container["image"]
    assert container["envFrom"] == deployment_container["envFrom"]
    _assert_non_root(pod)


def test_k8s_config_and_secret(k8s: dict[str, dict[str, Any]]) -> None:
    data = k8s["ConfigMap"]["data"]
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values are strings"
    assert data["PORT"] == str(APP_PORT)
    assert data["REDIS_URL"].startswith("redis://")
    secret = k8s["Secret"]
    values = secret.get("stringData", {})
    assert {"JWT_SECRET", "DATABASE_URL"} <= set(values)
    assert values["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert not {"JWT_SECRET", "DATABASE_URL"} & set(data), "secrets belong in the Secret"


def test_deploy_settings_are_known_to_the_app(
    compose: dict[str, Any], k8s: dict[str, dict[str, Any]]
) -> None:
    config = REPO_ROOT / "app" / "config.py"
    if not config.is_file():
        pytest.skip("app/config.py not present")
    source = config.read_text(encoding="utf-8")
    names = set(k8s["ConfigMap"]["data"]) | set(k8s["Secret"]["stringData"])
    names |= set(compose["services"]["app1"]["environment"])
    unknown = sorted(name for name in names if not re.search(rf"^\s+{name}\s*:", source, re.M))
    assert not unknown, f"settings the app does not define: {unknown}"


# --- Prometheus ------------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "WebSocketHighConnections": ("websocket_connections_total", "> 8000"),
    "WebSocketHighErrorRate": ("rate(websocket_errors_total[5m])", "> 10"),
    "WebSocketHighLatency": ("websocket_message_duration_seconds_bucket", "> 1"),
    "WebSocketFanoutLagHigh": ("websocket_fanout_lag_seconds_bucket", ">"),
    "WebSocketFanoutStalled": ("websocket_fanout_lag_seconds_count", "== 0"),
    "CampusHubInstanceDown": ("up{", "== 0"),
}


def _rules() -> dict[str, dict[str, Any]]:
    groups = _load_yaml(ALERTS)["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_alert_rules_structure() -> None:
    rules = _rules()
    for name, (metric, comparison) in REQUIRED_ALERTS.items():
        expr = " ".join(rules[name]["expr"].split())
        assert metric in expr and comparison in expr, name
    assert rules["WebSocketHighConnections"]["for"] == "5m"
    assert "sum by (service)" in rules["WebSocketHighConnections"]["expr"]
    assert "histogram_quantile(0.95" in rules["WebSocketHighLatency"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_alert_metrics_exist_in_the_app() -> None:
    metrics = REPO_ROOT / "app" / "metrics.py"
    if not metrics.is_file():
        pytest.skip("app/metrics.py not present")
    source = metrics.read_text(encoding="utf-8")
    for name in (
        "websocket_connections_total",
        "websocket_errors",
        "websocket_message_duration_seconds",
        "websocket_fanout_lag_seconds",
        "websocket_handshakes_refused_total",
    ):
        assert f'"{name}' in source, name


def _promtool(*args: str) -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_promtool_check_rules() -> None:
    _promtool("check", "rules", str(ALERTS))


def test_promtool_test_rules() -> None:
    _promtool("test", "rules", str(ALERTS_TEST))
