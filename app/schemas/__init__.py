"""Shapes passed around: REST models, WebSocket frames and bus payloads."""

from __future__ import annotations

UserId = str
GroupId = str
Seq = int
