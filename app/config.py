"""Settings from the environment (and `.env`); field names are the env names of SPEC §8."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_JWT_SECRET = "change-me"
EMBEDDED_SQLITE = "campushub.db"


def _split_list(value: object) -> object:
    """Accept a JSON list or a comma-separated string for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True
    )

    # Service
    HOST: str = "0.0.0.0"
    PORT: int = Field(8889, ge=1, le=65535)
    SERVICE_NAME: str = "campushub-realtime"
    DEV_MODE: bool = False
    LOG_LEVEL: str = "INFO"
    LOG_FORMAT: Literal["plain", "json"] = "plain"
    GC_FULL_INTERVAL: float = Field(600, ge=0)

    # Storage and bus (SPEC §2): unset → embedded mode
    DATABASE_URL: str | None = None
    SQLITE_PATH: str = EMBEDDED_SQLITE
    DB_POOL_SIZE: int = Field(20, ge=1)
    REDIS_URL: str | None = None

    # Auth (SPEC §5)
    JWT_SECRET: str = DEFAULT_JWT_SECRET
    JWT_ALGORITHM: Literal["HS256", "HS384", "HS512"] = "HS256"
    JWT_DEV_TTL: int = Field(86400, ge=1)

    # WebSocket limits (SPEC §8)
    WS_MAX_CONNECTIONS: int = Field(10000, ge=1)
    WS_READ_TIMEOUT: float = Field(60, gt=0)
    WS_WRITE_TIMEOUT: float = Field(10, gt=0)
    WS_HEARTBEAT_INTERVAL: float = Field(30, gt=0)
    WS_AUTH_TIMEOUT: float = Field(10, gt=0)
    WS_RESUME_LIMIT: int = Field(500, ge=1)
    WS_MAX_MESSAGE_BYTES: int = Field(524288, ge=1024)
    WS_SEND_QUEUE: int = Field(256, ge=1)
    WS_ALLOWED_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    WS_CONNECT_RATE_PER_IP: int = Field(120, ge=1)
    WS_MAX_AUTH_FAILURES: int = Field(3, ge=1)
    WS_SHUTDOWN_TIMEOUT: float = Field(5, gt=0)
    WS_PER_MESSAGE_DEFLATE: bool = False
    WS_DIRECT_WRITES: bool = True
    TRUSTED_PROXIES: Annotated[list[str], NoDecode] = Field(default_factory=list)
    RATE_LIMIT_MESSAGES_PER_SECOND: float = Field(10, gt=0)
    RATE_LIMIT_BURST: int = Field(20, ge=1)
    MAX_CONTENT_CHARS: int = Field(4000, ge=1)

    # Fan-out and presence (SPEC §7)
    STREAM_MESSAGES: str = "chat.message.new"
    STREAM_NOTIFICATIONS: str = "chat.notification.new"
    STREAM_EVENTS: str = "chat.events"
    STREAM_MAXLEN: int = Field(100000, ge=100)
    PRESENCE_TTL: int = Field(120, ge=1)
    FANOUT_STALL_TIMEOUT: float = Field(15, gt=0)
    GAP_FILL_DELAY: float = Field(0.5, gt=0)

    @field_validator("WS_ALLOWED_ORIGINS", "TRUSTED_PROXIES", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("TRUSTED_PROXIES")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # raises ValueError on a bad entry
        return value

    @model_validator(mode="after")
    def _enforce_secret(self) -> Settings:
        if not self.is_dev and self.JWT_SECRET == DEFAULT_JWT_SECRET:
            raise ValueError(
                "JWT_SECRET is unset or left at its default; set a strong secret "
                "(the default is accepted only in embedded mode, without DATABASE_URL, "
                "or with DEV_MODE=true)"
            )
        if not self.is_dev and len(self.JWT_SECRET) < 16:
            raise ValueError("JWT_SECRET must be at least 16 characters outside embedded/dev mode")
        return self

    @property
    def embedded(self) -> bool:
        return self.DATABASE_URL is None

    @property
    def is_dev(self) -> bool:
        """Embedded mode or explicit DEV_MODE: default secret and the dev login are allowed."""
        return self.DEV_MODE or self.embedded

    @property
    def database_url(self) -> str:
        if self.DATABASE_URL:
            return self.DATABASE_URL
        return f"sqlite+aiosqlite:///{self.SQLITE_PATH}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
