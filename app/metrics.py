"""Prometheus metrics with the names of SPEC §9, each labelled with `service`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("websocket_connections_total", "Open WebSocket connections", ["service"])
MESSAGES = Counter(
    "websocket_messages_total", "WebSocket messages by direction", ["type", "service"]
)
MESSAGE_DURATION = Histogram(
    "websocket_message_duration_seconds",
    "Handling time of a client frame (receive) and store-to-push time (send)",
    ["type", "service"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ERRORS = Counter("websocket_errors_total", "WebSocket errors", ["type", "service"])
ONLINE_USERS = Gauge("websocket_online_users", "Users with an open connection here", ["service"])
DISCONNECTS = Counter(
    "websocket_disconnects_total", "Closed WebSocket connections by close code", ["code", "service"]
)
REFUSED = Counter(
    "websocket_handshakes_refused_total",
    "WebSocket handshakes refused before the upgrade: origin, rate (per-IP limit), full, shutdown",
    ["reason", "service"],
)
REPLAYED = Counter(
    "websocket_replayed_messages_total", "Messages replayed by resume and sync", ["service"]
)
FANOUT_LAG = Histogram(
    "websocket_fanout_lag_seconds",
    "Time from a bus entry's publication to this instance reading and delivering it "
    "(an entry this instance published itself was delivered at once and is only read back)",
    ["service"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
