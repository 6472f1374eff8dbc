"""Render nginx/nginx.conf.template into a complete nginx main configuration.

The defaults give the configuration that docker-compose.yml mounts (nginx/nginx.conf);
tests call render() with their own ports, upstreams, certificate and writable
pid/log/temp paths.

    python nginx/render.py -o nginx/nginx.conf       # regenerate the committed file
    python nginx/render.py --check nginx/nginx.conf  # exit 1 if it is out of date
    python nginx/render.py --listen-port 8080 --tls-port 0 --upstream 127.0.0.1:9001

Placeholders are written `{{ name }}`. One that stands alone on its line may expand to
several lines (indented like the placeholder) or to nothing (the line is dropped).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TEMPLATE_PATH = Path(__file__).resolve().with_name("nginx.conf.template")
DEFAULT_OUTPUT = Path(__file__).resolve().with_name("nginx.conf")

# Defaults: the docker-compose setup on the official nginx image.
DEFAULT_UPSTREAMS: tuple[str, ...] = ("app1:8889", "app2:8889")
DEFAULT_CERT = "/etc/nginx/certs/tls.crt"
DEFAULT_KEY = "/etc/nginx/certs/tls.key"
BALANCING = {"ip_hash": "ip_hash;", "least_conn": "least_conn;", "round_robin": ""}

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_UPSTREAM = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")
_FORBIDDEN = set(";{}\"'\n\r\\$")


def _word(value: str, what: str) -> str:
    """One nginx argument: a path or name; quoted when it contains whitespace."""
    if not value or _FORBIDDEN & set(value):
        raise ValueError(f"{what}: unusable value {value!r}")
    return f'"{value}"' if any(ch.isspace() for ch in value) else value


def _address(host: str | None, port: int) -> str:
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    if not host:
        return str(port)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{_word(host, 'listen host')}:{port}"


def render(
    *,
    listen_port: int = 80,
    tls_port: int | None = 443,
    upstreams: Sequence[str] = DEFAULT_UPSTREAMS,
    cert: str | Path = DEFAULT_CERT,
    key: str | Path = DEFAULT_KEY,
    pid: str | Path = "/var/run/nginx.pid",
    error_log: str | Path = "/dev/stderr",
    access_log: str | Path = "/dev/stdout",
    temp_dir: str | Path = "/var/cache/nginx",
    user: str | None = "nginx",
    worker_processes: int | str = "auto",
    listen_host: str | None = None,
    balancing: str = "ip_hash",
    template: str | None = None,
) -> str:
    """Return the nginx main config (events + http) as text.

    tls_port=None leaves out the TLS listener and its certificate. user=None leaves out
    the `user` directive (needed when nginx does not start as root). listen_host binds
    both listeners to one address (e.g. "127.0.0.1"); None listens on all addresses.
    balancing is "ip_hash" (default), "least_conn" or "round_robin".
    """
    if not upstreams:
        raise ValueError("at least one upstream server is needed")
    for server in upstreams:
        if not _UPSTREAM.match(server):
            raise ValueError(f"upstream must be host:port, got {server!r}")
    if balancing not in BALANCING:
        raise ValueError(f"balancing must be one of {sorted(BALANCING)}, got {balancing!r}")
    if not re.fullmatch(r"auto|[1-9]\d*", str(worker_processes)):
        raise ValueError(f"worker_processes: 'auto' or a positive integer, not {worker_processes}")

    tls = ""
    if tls_port is not None:
        tls = "\n".join(
            [
                f"listen {_address(listen_host, tls_port)} ssl default_server;",
                f"ssl_certificate     {_word(str(cert), 'cert')};",
                f"ssl_certificate_key {_word(str(key), 'key')};",
                "ssl_protocols TLSv1.2 TLSv1.3;",
                "ssl_session_cache shared:campushub_tls:10m;",
                "ssl_session_timeout 1h;",
            ]
        )
    values = {
        "user": f"user {' '.join(_word(part, 'user') for part in user.split())};" if user else "",
        "worker_processes": str(worker_processes),
        "pid": _word(str(pid), "pid"),
        "error_log": _word(str(error_log), "error_log"),
        "access_log": _word(str(access_log), "access_log"),
        "temp_dir": _word(str(temp_dir).rstrip("/") or "/", "temp_dir"),
        "balancing": BALANCING[balancing],
        "upstream_servers": "\n".join(f"server {server};" for server in upstreams),
        "listen": _address(listen_host, listen_port),
        "tls": tls,
    }
    text = TEMPLATE_PATH.read_text(encoding="utf-8") if template is None else template
    return fill(text, values)


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace every `{{ name }}`; unknown names and unused values are errors."""
    used: set[str] = set()
    out: list[str] = []
    for line in template.splitlines():
        whole = _PLACEHOLDER.fullmatch(line.strip())
        if whole:
            name = whole.group(1)
            if name not in values:
                raise KeyError(f"no value for placeholder {name!r}")
            used.add(name)
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + part if part else "" for part in values[name].splitlines())
            continue

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise KeyError(f"no value for placeholder {name!r}")
            if "\n" in values[name]:
                raise ValueError(f"multi-line value for inline placeholder {name!r}")
            used.add(name)
            return values[name]

        out.append(_PLACEHOLDER.sub(substitute, line))
    unused = set(values) - used
    if unused:
        raise KeyError(f"values without placeholder: {sorted(unused)}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument("--check", type=Path, help="exit 1 unless this file equals the rendering")
    parser.add_argument("--listen-port", type=int, default=80)
    parser.add_argument("--tls-port", type=int, default=443, help="0 disables TLS")
    parser.add_argument("--listen-host", default=None)
    parser.add_argument("--upstream", action="append", help="host:port, repeatable")
    parser.add_argument("--balancing", choices=sorted(BALANCING), default="ip_hash")
    parser.add_argument("--cert", default=DEFAULT_CERT)
    parser.add_argument("--key", default=DEFAULT_KEY)
    parser.add_argument("--pid", default="/var/run/nginx.pid")
    parser.add_argument("--error-log", default="/dev/stderr")
    parser.add_argument("--access-log", default="/dev/stdout")
    parser.add_argument("--temp-dir", default="/var/cache/nginx")
    parser.add_argument("--user", default="nginx", help="empty: no user directive")
    parser.add_argument("--worker-processes", default="auto")
    args = parser.parse_args(argv)

    text = render(
        listen_port=args.listen_port,
        tls_port=args.tls_port or None,
        upstreams=args.upstream or DEFAULT_UPSTREAMS,
        cert=args.cert,
        key=args.key,
        pid=args.pid,
        error_log=args.error_log,
        access_log=args.access_log,
        temp_dir=args.temp_dir,
        user=args.user or None,
        worker_processes=args.worker_processes,
        listen_host=args.listen_host,
        balancing=args.balancing,
    )
    if args.check is not None:
        if args.check.read_text(encoding="utf-8") != text:
            print(f"{args.check} is out of date: run python nginx/render.py -o {args.check}")
            return 1
        return 0
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
