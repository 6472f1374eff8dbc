"""CampusHub Realtime: group chat, notifications and presence pushed over WebSocket."""

__version__ = "0.1.0"
