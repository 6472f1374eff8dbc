"""Make a self-signed TLS certificate for nginx's wss:// listener (development and tests).

    python nginx/selfsigned_cert.py DIR [--host NAME_OR_IP ...] [--force]

writes DIR/tls.crt and DIR/tls.key (ECDSA P-256, key mode 0600) unless both already
exist. docker-compose.yml runs it once (service tls-cert) to fill the certificate
volume; production mounts a real certificate under the same names instead.
Needs the `cryptography` package (installed with python-jose[cryptography]).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def generate(
    cert_path: str | Path,
    key_path: str | Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 825,
) -> None:
    """Write a self-signed certificate valid for `hosts` (DNS names or IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not hosts:
        raise ValueError("at least one host name or address is needed")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path = Path(key_path)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--host", action="append", help="DNS name or IP (repeatable)")
    parser.add_argument("--days", type=int, default=825)
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)

    cert, key = args.directory / "tls.crt", args.directory / "tls.key"
    if cert.is_file() and key.is_file() and not args.force:
        print(f"{cert} and {key} exist; keeping them")
        return 0
    args.directory.mkdir(parents=True, exist_ok=True)
    generate(cert, key, hosts=args.host or DEFAULT_HOSTS, days=args.days)
    print(f"wrote self-signed {cert} and {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
