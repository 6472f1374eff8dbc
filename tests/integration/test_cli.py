"""The command line: `python -m app token`, `make token`, `python -m app migrate`."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from jose import jwt

from app.config import Settings
from app.errors import NotAuthenticated
from app.security import decode_token

ROOT = Path(__file__).resolve().parents[2]
CLI_SECRET = "cli-test-secret-0123456789abcdef"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any setting of the service, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.update(extra)
    return env


def run(args: list[str], *, env: dict[str, str], cwd: Path = ROOT) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def mint(*args: str, **env: str) -> str:
    out = run([sys.executable, "-m", "app", "token", *args], env=clean_env(**env))
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return lines[0]


def test_token_decodes_with_the_secret_from_the_environment() -> None:
    token = mint("alice", "--name", "Alice", JWT_SECRET=CLI_SECRET)
    claims = decode_token(token, secret=CLI_SECRET, algorithm="HS256")
    assert (claims.user_id, claims.name, claims.role) == ("alice", "Alice", None)
    assert abs(claims.expires_at - (time.time() + 86400)) < 60
    with pytest.raises(NotAuthenticated):
        decode_token(token, secret="some-other-secret-0123456789", algorithm="HS256")


def test_token_role_service_ttl_and_algorithm() -> None:
    token = mint(
        "billing", "--role", "service", "--ttl", "120", JWT_SECRET=CLI_SECRET, JWT_ALGORITHM="HS512"
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    claims = decode_token(token, secret=CLI_SECRET, algorithm="HS512")
    assert claims.is_service and claims.user_id == "billing"
    assert claims.name == "billing"  # no --name: the name falls back to the user id
    assert abs(claims.expires_at - (time.time() + 120)) < 60


def test_token_rejects_an_unknown_role() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "token", "alice", "--role", "admin"],
        cwd=ROOT,
        env=clean_env(JWT_SECRET=CLI_SECRET),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "role" in done.stderr and done.stdout == ""


def test_make_token() -> None:
    # -o: never reinstall the venv from here, even if pyproject.toml is newer than its stamp.
    out = run(
        ["make", "-s", "-o", ".venv/.installed-stamp", "token", "USER=alice", "NAME=Alice A"],
        env=clean_env(JWT_SECRET=CLI_SECRET),
    )
    token = out.strip()
    assert token.count(".") == 2, out
    claims = decode_token(token, secret=CLI_SECRET, algorithm="HS256")
    assert (claims.user_id, claims.name) == ("alice", "Alice A")


def test_migrate_creates_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    assert not path.exists()
    run(
        [sys.executable, "-m", "app", "migrate"],
        env=clean_env(SQLITE_PATH=str(path), PYTHONPATH=str(ROOT)),
        cwd=tmp_path,  # no .env of the checkout applies
    )
    with closing(sqlite3.connect(path)) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"groups", "group_members", "messages", "read_marks", "notifications"} <= names
    assert "alembic_version" in names
