"""Run Alembic migrations programmatically (embedded mode migrates on start)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from alembic import command
from app.db.session import normalize_url


def project_root() -> Path:
    """The folder holding alembic.ini: the checkout, or the working directory of an image."""
    for candidate in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (candidate / "alembic.ini").is_file() and (candidate / "alembic").is_dir():
            return candidate
    raise RuntimeError("alembic.ini and alembic/ not found next to the app or in the working dir")


def alembic_config(url: str | None = None) -> Config:
    """The project's Alembic configuration, for the database at `url` (none: the scripts only)."""
    root = project_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    """Alembic's async env runs its own event loop, so it gets a thread of its own."""
    await asyncio.to_thread(upgrade, url, revision)


@dataclass(frozen=True)
class SchemaCheck:
    """Whether a database's Alembic revision lets this version run.

    At this version's head: yes. Behind it (a revision it knows, or none: not migrated): no,
    `python -m app migrate` first. At a revision it does not know: yes, that is a newer
    version's, migrated during a rolling upgrade, and migrations keep the previous version
    working (they add; they drop only what two versions back used).
    """

    head: str
    known: frozenset[str]

    @classmethod
    def of_scripts(cls) -> SchemaCheck:
        script = ScriptDirectory.from_config(alembic_config())
        head = script.get_current_head()
        if head is None:
            raise RuntimeError("alembic/ holds no revision")
        return cls(head=head, known=frozenset(r.revision for r in script.walk_revisions()))

    def usable(self, revision: str | None) -> bool:
        return revision == self.head or (revision is not None and revision not in self.known)


async def database_revision(session: AsyncSession) -> str | None:
    """The Alembic revision the database is at; None when it was never migrated. Run it last
    in a session: on Postgres a missing table fails the transaction."""
    try:
        return (await session.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except DBAPIError:  # no alembic_version table: never migrated
        return None
