"""``reload.watch``: reload when the config file or a saga file changes, without a signal.

Every ``reload.interval`` the watch takes the state of the config file and of every file the
``sagas.definitions`` globs match now (modification time, size, inode; symbolic links followed,
so a Kubernetes ConfigMap volume's atomic swap counts), and asks for a reload when it differs
from the last one it saw: a file edited, added to a glob's directory, or removed. Stat polling
needs no inotify, works on every filesystem and costs a few ``stat`` calls per interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from proxy.config import LiveConfig
from saga_runner.catalog import definition_files

FileState = tuple[tuple[str, int, int, int], ...]


def file_state(live: LiveConfig) -> FileState:
    """The state of the config file and of the saga files its globs match now."""
    config = live.config
    paths = [live.path]
    if config.sagas is not None:
        paths += definition_files(live.loaded.base_dir, config.sagas.definitions)
    return tuple(_stat(path) for path in paths)


def _stat(path: Path) -> tuple[str, int, int, int]:
    try:
        seen = path.stat()
    except OSError:
        return (str(path), -1, -1, -1)
    return (str(path), seen.st_mtime_ns, seen.st_size, seen.st_ino)


async def watch(live: LiveConfig, interval: float, changed: Callable[[], None]) -> None:
    """Call ``changed`` each time the files differ from the last look, until cancelled.

    Args:
        live: the config in effect (its globs are looked at again after each reload).
        interval: seconds between two looks.
        changed: what to call (``Reloader.request``).
    """
    seen = await asyncio.to_thread(file_state, live)
    while True:
        await asyncio.sleep(interval)
        now = await asyncio.to_thread(file_state, live)
        if now != seen:
            seen = now
            changed()
