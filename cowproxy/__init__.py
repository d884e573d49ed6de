"""cowproxy: copy-on-write branches of a PostgreSQL database, served over the wire protocol."""

__version__ = "0.1.0"
