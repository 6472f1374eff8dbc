"""Settings (SPEC §8): defaults, the JWT secret guard, list parsing, and .env.example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from app.config import DEFAULT_JWT_SECRET, Settings

ROOT = Path(__file__).resolve().parents[2]
PG = "postgresql+asyncpg://u:p@db:5432/campushub"
STRONG = "a-strong-secret-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the environment or from a `.env` in the working directory."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


SPEC_DEFAULTS: dict[str, object] = {
    "WS_MAX_CONNECTIONS": 10000,
    "WS_READ_TIMEOUT": 60,
    "WS_WRITE_TIMEOUT": 10,
    "WS_HEARTBEAT_INTERVAL": 30,
    "WS_AUTH_TIMEOUT": 10,
    "WS_RESUME_LIMIT": 500,
    "WS_MAX_MESSAGE_BYTES": 524288,
    "WS_SEND_QUEUE": 256,
    "RATE_LIMIT_MESSAGES_PER_SECOND": 10,
    "RATE_LIMIT_BURST": 20,
    "MAX_CONTENT_CHARS": 4000,
    "PRESENCE_TTL": 120,
    "FANOUT_STALL_TIMEOUT": 15,
    "HOST": "0.0.0.0",
    "PORT": 8889,
    "JWT_ALGORITHM": "HS256",
    "STREAM_MESSAGES": "chat.message.new",
    "STREAM_NOTIFICATIONS": "chat.notification.new",
    "DATABASE_URL": None,
    "REDIS_URL": None,
}


@pytest.mark.parametrize(("name", "expected"), SPEC_DEFAULTS.items())
def test_spec_defaults(name: str, expected: object) -> None:
    assert getattr(make(), name) == expected


def test_default_is_embedded_mode() -> None:
    settings = make()
    assert settings.embedded and settings.is_dev
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.WS_ALLOWED_ORIGINS == [] and settings.TRUSTED_PROXIES == []
    assert settings.WS_CONNECT_RATE_PER_IP >= 1 and settings.STREAM_MAXLEN >= 100


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("MAX_CONTENT_CHARS", "12")
    settings = make()
    assert settings.PORT == 9999 and settings.MAX_CONTENT_CHARS == 12


@pytest.mark.parametrize("secret", [None, DEFAULT_JWT_SECRET, "short", "x" * 15])
def test_weak_secret_refused_with_database_url(secret: str | None) -> None:
    values: dict[str, Any] = {"DATABASE_URL": PG}
    if secret is not None:
        values["JWT_SECRET"] = secret
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        make(**values)


def test_weak_secret_refused_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", PG)
    with pytest.raises(ValidationError) as info:
        make()
    message = str(info.value)
    assert "JWT_SECRET" in message and "default" in message


def test_empty_secret_in_environment_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", PG)
    monkeypatch.setenv("JWT_SECRET", "")
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        make()


def test_strong_secret_accepted_with_database_url() -> None:
    settings = make(DATABASE_URL=PG, JWT_SECRET=STRONG)
    assert not settings.embedded and not settings.is_dev
    assert settings.database_url == PG


@pytest.mark.parametrize("secret", [None, DEFAULT_JWT_SECRET, "short"])
def test_weak_secret_accepted_in_embedded_mode(secret: str | None) -> None:
    settings = make(**({} if secret is None else {"JWT_SECRET": secret}))
    assert settings.embedded
    assert settings.JWT_SECRET == (secret or DEFAULT_JWT_SECRET)


@pytest.mark.parametrize("dev", [True, "true", "1"])
def test_weak_secret_accepted_with_dev_mode(dev: object) -> None:
    settings = make(DATABASE_URL=PG, DEV_MODE=dev)
    assert settings.is_dev and not settings.embedded
    assert settings.JWT_SECRET == DEFAULT_JWT_SECRET


def test_dev_mode_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", PG)
    monkeypatch.setenv("DEV_MODE", "true")
    assert make().is_dev


@pytest.mark.parametrize("field", ["WS_ALLOWED_ORIGINS", "TRUSTED_PROXIES"])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('["10.0.0.1", "192.168.0.0/16"]', ["10.0.0.1", "192.168.0.0/16"]),
        ("10.0.0.1,192.168.0.0/16", ["10.0.0.1", "192.168.0.0/16"]),
        (" 10.0.0.1 , 192.168.0.0/16 ,", ["10.0.0.1", "192.168.0.0/16"]),
        ("10.0.0.1", ["10.0.0.1"]),
        ("[]", []),
    ],
)
def test_list_settings_from_environment(
    monkeypatch: pytest.MonkeyPatch, field: str, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv(field, raw)
    assert getattr(make(), field) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            '["https://a.example", "http://b.example:8080"]',
            ["https://a.example", "http://b.example:8080"],
        ),
        (
            "https://a.example, http://b.example:8080",
            ["https://a.example", "http://b.example:8080"],
        ),
        ("*", ["*"]),
    ],
)
def test_allowed_origins_forms(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("WS_ALLOWED_ORIGINS", raw)
    assert make().WS_ALLOWED_ORIGINS == expected


def test_list_settings_accept_python_lists() -> None:
    settings = make(WS_ALLOWED_ORIGINS=["https://a.example"], TRUSTED_PROXIES=["::1"])
    assert settings.WS_ALLOWED_ORIGINS == ["https://a.example"]
    assert settings.TRUSTED_PROXIES == ["::1"]


@pytest.mark.parametrize(
    "raw", ["not-an-ip", "10.0.0.1,nope", "300.1.1.1", "10.0.0.0/33", '["10.0.0.1", "x"]']
)
def test_bad_trusted_proxy_rejected(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", raw)
    with pytest.raises(ValidationError, match="TRUSTED_PROXIES"):
        make()


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "0"), ("PORT", "70000"), ("JWT_ALGORITHM", "none"), ("JWT_ALGORITHM", "RS256")],
)
def test_out_of_range_values_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        make()


def _example_entries() -> tuple[dict[str, str], set[str]]:
    """(KEY → value of every `KEY=value` line, KEYs only shown commented out as `# KEY=...`)."""
    values: dict[str, str] = {}
    commented: set[str] = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            values[match[1]] = match[2].strip()
        elif match := re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", line):
            commented.add(match[1])
    return values, commented


def test_env_example_lists_every_setting() -> None:
    values, commented = _example_entries()
    listed = set(values) | commented
    assert listed == set(Settings.model_fields), (
        f"missing: {sorted(set(Settings.model_fields) - listed)}, "
        f"unknown: {sorted(listed - set(Settings.model_fields))}"
    )


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_env_example_shows_the_default(name: str) -> None:
    values, commented = _example_entries()
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if name not in values:
        assert name in commented
        assert default is None, f"{name} is commented out but defaults to {default!r}"
        return
    raw = values[name]
    if raw == "":
        assert default in (None, [], ""), f"{name} is empty in .env.example, default {default!r}"
        return
    if isinstance(default, list):
        parsed: object = [part.strip() for part in raw.split(",") if part.strip()]
    else:
        assert field.annotation is not None
        parsed = TypeAdapter(field.annotation).validate_python(raw, strict=False)
    assert parsed == default, f"{name}: .env.example says {raw!r}, default is {default!r}"


def test_env_example_loads_to_the_defaults() -> None:
    from_example = Settings(_env_file=ROOT / ".env.example")
    assert from_example.model_dump() == make().model_dump()


def test_serve_keeps_import_time_objects_out_of_the_cycle_collector(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`python -m app serve` freezes what startup built before the loop runs (a full
    collection over it stalls every connection), installs the collector policy with
    GC_FULL_INTERVAL and runs its small passes beside the server (app/gc_policy.py); the
    server itself is not started here."""
    import asyncio
    import gc
    import logging

    import uvicorn

    from app.__main__ import main
    from app.gc_policy import GcPolicy

    frozen: list[int] = []
    beside: list[str] = []

    async def serve(self: uvicorn.Server, sockets: object = None) -> None:
        frozen.append(gc.get_freeze_count())
        beside.extend(t.get_name() for t in asyncio.all_tasks() if not t.done())

    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "chat.db"))
    monkeypatch.setenv("GC_FULL_INTERVAL", "120")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    before = list(gc.callbacks)
    try:
        assert main(["serve", "--port", "1"]) == 0
        added = [cb for cb in gc.callbacks if cb not in before]
    finally:
        gc.callbacks[:] = before
        gc.unfreeze()
        root.handlers[:], root.level = handlers, level
    assert frozen and frozen[0] > 10_000
    assert "gc-small-passes" in beside
    policies = [getattr(cb, "__self__", None) for cb in added]
    assert len(policies) == 1 and isinstance(policies[0], GcPolicy)
    assert policies[0].full_interval == 120
