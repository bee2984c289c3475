"""Everything a process needs to run sagas, opened and closed together.

``SagaRuntime.open`` loads the definitions (``check`` has already validated them), connects to the
store, applies migrations when asked, wires the engine to a step transport (the one given, else
an aiohttp session of its own) and starts the process's lease renewer (``saga_runner.leases``);
``close`` stops it before the transport and the store close. The proxy opens one per process in
a cleanup context (with its own transport); the CLI opens one for operator commands.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from saga_runner.attempts import AttemptLoop
from saga_runner.brokers.base import BrokerAdapter
from saga_runner.caller import StepCaller
from saga_runner.catalog import SagaCatalog
from saga_runner.definition import SagaDefinition
from saga_runner.engine import SagaEngine
from saga_runner.errors import DefinitionMissing
from saga_runner.leases import LeaseRenewer
from saga_runner.observer import NullObserver, SagaObserver
from saga_runner.publishing import BrokerPublisher
from saga_runner.redact import Redactor
from saga_runner.runs import EngineSettings
from saga_runner.seal import Sealer
from saga_runner.store import SagaStore
from saga_runner.tracing import NULL_TRACER, SagaTracer
from saga_runner.transport import AiohttpTransport, StepTransport


def replica_id() -> str:
    """A name for this process that is unique across replicas and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RuntimeSettings:
    """What the runtime needs from the sidecar config."""

    store_url: str
    base_dir: Path
    migrate: bool
    lease_seconds: float
    default_timeout: float
    services: Mapping[str, str]
    redact_headers: tuple[str, ...] = ()
    redact_fields: tuple[str, ...] = ()
    # base64 AES-256 keys sealing the redacted trigger values (the first encrypts).
    encryption_keys: tuple[str, ...] = ()
    # The callback URL of awaiting steps without its token (``sagas.callbacks``).
    callback_url: str = "http://127.0.0.1:8080/_saga/callbacks"


class SagaRuntime:
    """The store, engine, catalog, step transport and lease renewer of one process."""

    def __init__(
        self,
        store: SagaStore,
        engine: SagaEngine,
        catalog: SagaCatalog,
        transport: StepTransport,
    ) -> None:
        self.store = store
        self.engine = engine
        self.catalog = catalog
        self.transport = transport

    @property
    def leases(self) -> LeaseRenewer:
        """The renewer keeping the leases of every saga this process runs."""
        return self.engine.leases

    @classmethod
    async def open(
        cls,
        settings: RuntimeSettings,
        catalog: SagaCatalog,
        observer: SagaObserver | None = None,
        transport: StepTransport | None = None,
        tracer: SagaTracer = NULL_TRACER,
        brokers: Mapping[str, BrokerAdapter] | None = None,
    ) -> SagaRuntime:
        """Connect to the store (migrating it when configured) and build the engine.

        ``transport`` carries the step calls (default: an ``AiohttpTransport``); the runtime
        closes it in ``close``. ``tracer`` opens the spans of runs and step calls. ``brokers``
        (opened and closed by the caller) take the steps that publish.
        """
        store = await SagaStore.from_url(settings.store_url, settings.base_dir)
        try:
            if settings.migrate:
                await store.migrate()
        except BaseException:
            await store.close()
            raise
        if transport is None:
            transport = AiohttpTransport()
        redactor = Redactor(settings.redact_headers, settings.redact_fields)
        observer = observer or NullObserver()
        leases = LeaseRenewer(store, settings.lease_seconds)
        engine = SagaEngine(
            store,
            AttemptLoop(
                store,
                StepCaller(transport, BrokerPublisher(brokers or {})),
                observer,
                redactor,
                tracer=tracer,
            ),
            observer,
            redactor,
            EngineSettings(
                owner=replica_id(),
                lease_seconds=settings.lease_seconds,
                default_timeout=settings.default_timeout,
                services=dict(settings.services),
                callback_url=settings.callback_url,
            ),
            leases,
            Sealer.from_base64(settings.encryption_keys),
            tracer,
        )
        leases.start()
        return cls(store, engine, catalog, transport)

    def reload(self, catalog: SagaCatalog, settings: RuntimeSettings) -> None:
        """Apply a config reload: new instances start from ``catalog``, while instances already
        running keep their version (it stays known by hash); later step calls and records use
        ``settings``' services and redaction lists. The store, lease and keys stay as opened."""
        self.catalog = catalog.retaining(self.catalog)
        services = self.engine.settings.services
        services.clear()
        services.update(settings.services)
        self.engine.redactor.configure(settings.redact_headers, settings.redact_fields)

    async def definition_for(self, definition_hash: str) -> SagaDefinition:
        """The definition an instance is pinned to: loaded now, or its stored snapshot.

        Raises:
            DefinitionMissing: neither the catalog nor the store knows the hash.
        """
        known = self.catalog.by_hash.get(definition_hash)
        if known is not None:
            return known
        stored = await self.store.get_definition(definition_hash)
        if stored is None or not isinstance(stored.body, dict):
            raise DefinitionMissing(f"definition {definition_hash[:12]} is not known any more")
        return SagaDefinition.from_snapshot(stored.body)

    async def close(self) -> None:
        """Stop renewing leases, close the step transport and the store."""
        await self.leases.stop()
        await self.transport.close()
        await self.store.close()
