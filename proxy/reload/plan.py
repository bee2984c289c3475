"""Which settings a reload applies, and the config it leaves in effect.

A reload applies the settings under ``RELOADED``: the saga files (``sagas.definitions`` and
``sagas.max_input``), ``services`` (added or changed; a removed one stays until a restart,
since a running saga may still call it), ``idempotency`` except ``KEPT`` (the store, and the
secret and headers that name the keys already stored), ``admin.token``,
``admin.allowed_hosts``, ``admin.allow_public_without_token``, ``log.level`` and ``redact``.
Every other setting is bound to something opened at start (listeners, stores, brokers,
connection pools, worker processes, the file watch) and keeps its old value until a restart:
``plan`` names each one that changed, so the reload can say so.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from proxy.config import SidecarConfig

RELOADED = (
    "admin.token",
    "admin.allowed_hosts",
    "admin.allow_public_without_token",
    "services",
    "idempotency",
    "sagas.definitions",
    "sagas.max_input",
    "log.level",
    "redact",
)
"""Settings (with everything below them) a reload applies."""

KEPT = ("idempotency.store", "idempotency.key_secret", "idempotency.scope_headers")
"""Settings below ``RELOADED`` ones that a reload still does not apply."""

Path = tuple[str, ...]
_ABSENT = object()


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does with a config file that changed.

    Attributes:
        data: the config to validate and put in effect: the new file's settings, with each
            one that is not reloaded at its old value.
        applied: the settings (dotted, ``idempotency.ttl``) that take their new value.
        kept: the settings that changed in the file but keep their old value until a restart.
    """

    data: dict[str, Any]
    applied: tuple[str, ...]
    kept: tuple[str, ...]


def plan(old: SidecarConfig, new: SidecarConfig) -> ReloadPlan:
    """Compare the config in effect with the one just read (both validated)."""
    before, after = old.model_dump(), new.model_dump()
    data = copy.deepcopy(after)
    applied: list[str] = []
    kept: list[str] = []
    for path, was, now in _changes(before, after):
        if reloadable(path, removed=now is _ABSENT):
            applied.append(".".join(path))
        else:
            kept.append(".".join(path))
            _put(data, path, was)
    return ReloadPlan(data, tuple(applied), tuple(kept))


def reloadable(path: Path, *, removed: bool = False) -> bool:
    """Whether a reload applies a change of the setting at ``path`` (``removed``: the key is
    gone from the new file, which only ``services`` entries can be)."""
    dotted = ".".join(path)
    if any(_within(dotted, setting) for setting in KEPT):
        return False
    if path[0] == "services" and removed:
        return False
    return any(_within(dotted, setting) for setting in RELOADED)


def _within(dotted: str, setting: str) -> bool:
    return dotted == setting or dotted.startswith(setting + ".")


def _changes(before: Any, after: Any, path: Path = ()) -> Iterator[tuple[Path, Any, Any]]:
    """Every setting whose value differs: sections and ``services`` are walked into, any other
    value (a list, a scalar, a section that appeared or went away) is compared whole."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in dict.fromkeys([*before, *after]):
            yield from _changes(before.get(key, _ABSENT), after.get(key, _ABSENT), (*path, key))
    elif before != after:
        yield path, before, after


def _put(data: dict[str, Any], path: Path, value: Any) -> None:
    *parents, last = path
    for key in parents:
        data = data[key]
    if value is _ABSENT:
        data.pop(last, None)
    else:
        data[last] = value
