"""Field sets of SPEC §3.3 / §4, as the spec lists them (not read from the code)."""

from __future__ import annotations

# A message, pushed as `new_message` data and answered by the REST history routes.
MESSAGE_FIELDS = frozenset(
    {
        "message_id",
        "group_id",
        "seq",
        "sender_id",
        "sender_name",
        "msg_type",
        "content",
        "image_url",
        "created_at",
    }
)
