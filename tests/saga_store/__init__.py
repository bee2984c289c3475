"""Contract tests of the saga store, run against SQLite and PostgreSQL."""
