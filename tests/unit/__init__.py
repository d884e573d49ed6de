"""Unit tests of sans-IO code: bytes in, values out. They need no PostgreSQL."""
