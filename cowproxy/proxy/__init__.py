"""The asyncio data path: listener, sessions, upstream connections, cancel, TLS."""
