"""Fixtures of the hot-reload suite: the durability suite's real sidecar processes on a fresh
PostgreSQL schema, a recording upstream behind the saga steps, and helpers to rewrite a running
sidecar's files and wait for what its log says about a reload.

Fixtures (from ``durability.conftest``): ``cluster``, ``ledger``, ``ledger_upstream``, ``pg``,
``records``, ``store_kind`` (PostgreSQL), ``http``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from conftest import Sidecar, deep_merge
from durability.conftest import (
    cluster,
    eventually,
    http,
    ledger,
    ledger_upstream,
    pg,
    records,
    store_kind,
)

__all__ = ["cluster", "http", "ledger", "ledger_upstream", "pg", "records", "store_kind"]


def rewrite_config(sidecar: Sidecar, **changes: Any) -> dict[str, Any]:
    """Write ``changes`` merged over the sidecar's config file; return the new config."""
    config = deep_merge(sidecar.config, changes)
    Path(sidecar.config_path).write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    return config


def events(sidecar: Sidecar, event: str) -> list[dict[str, Any]]:
    """The sidecar's JSON log records with ``"event": event``."""
    return [r for r in sidecar.log_records() if r.get("event") == event]


async def next_event(sidecar: Sidecar, event: str, seen: int = 0) -> dict[str, Any]:
    """Wait for the ``seen``+1-th log record of ``event``; return it."""

    def found() -> list[dict[str, Any]]:
        return events(sidecar, event)[seen:]

    records: list[dict[str, Any]] = await eventually(found, f"log event {event}")
    return records[0]
