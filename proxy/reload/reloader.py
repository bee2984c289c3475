"""Hot reload: re-read the config file and every saga file, and apply them all or nothing.

``Reloader.reload`` reads and validates the files off the event loop, then applies what
``proxy.reload.plan`` allows in one step: the config in effect (``LiveConfig``), the log level,
the idempotency guard's settings, and the saga service (catalog, services, redaction). A file
that does not load (malformed YAML, an invalid setting, a saga-file error) changes nothing: each
problem is logged as ``FILE:LINE: message`` and counted in ``config_reload_failures_total``.
Reloads run one at a time; requests that arrive during one (SIGHUP, the file watch,
``POST /reload``) are coalesced into one more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.config import LiveConfig, LoadedConfig, SidecarConfig, load_config
from proxy.idempotency.middleware import IDEMPOTENCY_GUARD
from proxy.keys import SAGAS
from proxy.metrics import SidecarMetrics
from proxy.reload.plan import ReloadPlan, plan
from proxy.sagas.service import load_catalog
from saga_runner.catalog import SagaCatalog
from yamlconfig.errors import ConfigError
from yamlconfig.loader import LocatedDocument, validate

log = logging.getLogger("saga_sidecar.reload")


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did.

    Attributes:
        ok: the files were valid and are in effect; False: nothing changed.
        applied: the settings that took their new value (dotted names).
        kept: the settings that changed in the file but keep their old value until a restart.
        sagas: how the saga definitions changed (``payment: new version 1a2b3c4d5e6f``).
        errors: ``FILE:LINE: message`` for every problem found (``ok`` is False).
    """

    ok: bool
    applied: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    sagas: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The result as the admin API answers it."""
        return {
            "reloaded": self.ok,
            "applied": list(self.applied),
            "not_reloaded": list(self.kept),
            "sagas": list(self.sagas),
            "errors": list(self.errors),
        }


class Reloader:
    """Re-reads the files of one sidecar process and applies them (module docstring).

    Args:
        live: the config in effect, which a reload replaces.
        public: the public app, whose idempotency guard and saga service a reload updates.
        metrics: where reloads are counted.
        signal_parent: this process is one of several workers (``POST /reload`` asks the
            supervising parent to signal them all).
    """

    def __init__(
        self,
        live: LiveConfig,
        public: web.Application,
        metrics: SidecarMetrics,
        *,
        signal_parent: bool = False,
    ) -> None:
        self.live = live
        self.public = public
        self.metrics = metrics
        self.signal_parent = signal_parent
        self._lock = asyncio.Lock()
        self._wanted = asyncio.Event()
        self._cause = "signal"
        metrics.config_last_reload_success.set(time.time())
        metrics.config_last_reload_successful.set(1)

    def request(self, cause: str = "signal") -> None:
        """Ask for a reload (a signal handler: it returns at once; ``run`` does the work)."""
        self._cause = cause
        self._wanted.set()

    async def run(self) -> None:
        """Reload each time one is requested, until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.reload(self._cause)

    async def reload(self, cause: str) -> ReloadResult:
        """Re-read the config and saga files now and apply them, all or nothing.

        Args:
            cause: what asked for it (``signal``, ``watch``, ``admin``), for the log.
        """
        async with self._lock:
            try:
                loaded, planned, catalog = await asyncio.to_thread(self._read)
            except ConfigError as exc:
                return self._refused(tuple(str(issue) for issue in exc.issues), cause)
            return self._apply(loaded, planned, catalog, cause)

    def _read(self) -> tuple[LoadedConfig, ReloadPlan, SagaCatalog | None]:
        """Load and validate everything a reload would put in effect (in a worker thread).

        Raises:
            ConfigError: a file is missing or invalid, or the new settings do not fit the ones
                that are kept (an ``admin.token`` removed while ``admin.listen`` stays public).
        """
        current = self.live.loaded
        new = load_config(current.path)
        planned = plan(current.config, new.config)
        config = validate(
            LocatedDocument(str(current.path), planned.data, new.lines), SidecarConfig
        )
        loaded = LoadedConfig(path=current.path, config=config, lines=new.lines)
        catalog = load_catalog(loaded, require_matches=True) if config.sagas is not None else None
        return loaded, planned, catalog

    def _apply(
        self, loaded: LoadedConfig, planned: ReloadPlan, catalog: SagaCatalog | None, cause: str
    ) -> ReloadResult:
        """Put a validated reload in effect (no await: requests see all of it or none)."""
        config = loaded.config
        self.live.loaded = loaded
        logging.getLogger().setLevel(config.log.level.upper())
        guard = self.public.get(IDEMPOTENCY_GUARD)
        if guard is not None:
            guard.reconfigure(config.idempotency)
        service = self.public.get(SAGAS)
        sagas: tuple[str, ...] = ()
        if service is not None and catalog is not None:
            sagas = saga_changes(service.catalog, catalog)
            service.reload(loaded, catalog)
        self.metrics.config_last_reload_success.set(time.time())
        self.metrics.config_last_reload_successful.set(1)
        result = ReloadResult(True, planned.applied, planned.kept, sagas)
        log.info(
            "config reloaded (%s): settings %s; sagas %s",
            cause,
            ", ".join(result.applied) or "unchanged",
            ", ".join(result.sagas) or "unchanged",
            extra={"event": "config_reloaded", "pid": os.getpid(), **result.as_json()},
        )
        if result.kept:
            log.warning(
                "not reloaded, restart to apply: %s (they keep their old values)",
                ", ".join(result.kept),
                extra={"event": "config_reload_restart_needed", "not_reloaded": list(result.kept)},
            )
        return result

    def _refused(self, errors: tuple[str, ...], cause: str) -> ReloadResult:
        self.metrics.config_reload_failures.inc()
        self.metrics.config_last_reload_successful.set(0)
        for error in errors:
            log.error("%s", error, extra={"event": "config_reload_error"})
        log.error(
            "config reload (%s) refused with %d problem(s): the config and saga definitions in "
            "effect are unchanged",
            cause,
            len(errors),
            extra={"event": "config_reload_failed", "pid": os.getpid(), "errors": list(errors)},
        )
        return ReloadResult(False, errors=errors)


def saga_changes(before: SagaCatalog, after: SagaCatalog) -> tuple[str, ...]:
    """How the sagas differ, by name: ``added``, ``removed`` or ``new version HASH``."""
    changes = []
    for name in dict.fromkeys([*before.by_name, *after.by_name]):
        old, new = before.by_name.get(name), after.by_name.get(name)
        if old is None:
            changes.append(f"{name}: added")
        elif new is None:
            changes.append(f"{name}: removed")
        elif old.definition_hash != new.definition_hash:
            changes.append(f"{name}: new version {new.definition_hash[:12]}")
    return tuple(changes)
