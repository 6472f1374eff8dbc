"""Who is online: one interface, in process memory (embedded) or in Redis (cluster)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol


class Presence(Protocol):
    async def connect(self, user_id: str, conn_id: str, groups: Iterable[str]) -> None:
        """A connection of `user_id` authenticated; it belongs to `groups`."""
        ...

    async def disconnect(self, user_id: str, conn_id: str, groups: Iterable[str]) -> None:
        """That connection closed; the user goes offline when it was the last one anywhere."""
        ...

    async def heartbeat(self, entries: Iterable[tuple[str, str]]) -> None:
        """(user_id, conn_id) pairs still alive: refresh their expiry."""
        ...

    async def online(self, user_ids: Iterable[str]) -> set[str]:
        """The subset of `user_ids` online now (any instance)."""
        ...

    async def close(self) -> None: ...


class MemoryPresence:
    """Presence of this process only: enough for embedded mode, where there is one instance."""

    def __init__(self) -> None:
        self._users: dict[str, dict[str, float]] = {}

    async def connect(self, user_id: str, conn_id: str, groups: Iterable[str]) -> None:
        self._users.setdefault(user_id, {})[conn_id] = time.time()

    async def disconnect(self, user_id: str, conn_id: str, groups: Iterable[str]) -> None:
        conns = self._users.get(user_id)
        if conns is not None:
            conns.pop(conn_id, None)
            if not conns:
                del self._users[user_id]

    async def heartbeat(self, entries: Iterable[tuple[str, str]]) -> None:
        now = time.time()
        for user_id, conn_id in entries:
            conns = self._users.get(user_id)
            if conns is not None and conn_id in conns:
                conns[conn_id] = now

    async def online(self, user_ids: Iterable[str]) -> set[str]:
        return {u for u in user_ids if u in self._users}

    async def close(self) -> None:
        self._users.clear()
