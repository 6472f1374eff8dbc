"""Domain logic shared by REST and WebSocket: takes repositories and the bus, raises AppError."""
