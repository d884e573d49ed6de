"""The Django app of the ORM suite: its models map production's tables (unmanaged)."""
