"""The README's curl walk-through works as printed, against a real embedded server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.server import ServerProcess
from tests.support.tokens import SECRET

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Walk-through with curl", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the walk-through block is missing"
    return match.group(1)


@pytest.mark.parametrize("mode", ["embedded", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_curl_walkthrough_as_printed(
    server_factory: Callable[..., ServerProcess], mode: str, request: pytest.FixtureRequest
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    env = {"DATABASE_URL": request.getfixturevalue("pg_url")} if mode == "postgres" else {}
    server = server_factory(env)
    script = walkthrough().replace("BASE=http://localhost:8889", f"BASE={server.base_url}")
    assert script.count("BASE=") == 1
    env = {**os.environ, "JWT_SECRET": SECRET}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    sent, offline, before, read, after = outputs
    assert sent["seq"] == 1 and sent["success"] is True
    assert [m["content"] for m in offline["items"]] == ["Hi Bob!"]
    assert offline["items"][0]["sender_name"] == "Alice"
    assert before["items"][0]["unread_count"] == 1
    assert read["last_read_seq"] == 1
    assert after["items"][0]["unread_count"] == 0
