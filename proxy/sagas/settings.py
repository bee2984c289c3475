"""What the saga runtime needs from the sidecar config, for ``serve`` and the operator CLI."""

from __future__ import annotations

from proxy.config import LoadedConfig
from saga_runner.runtime import RuntimeSettings


def runtime_settings(loaded: LoadedConfig) -> RuntimeSettings:
    """What the saga runtime needs from a config with a ``sagas`` section."""
    config = loaded.config
    assert config.sagas is not None
    return RuntimeSettings(
        store_url=config.sagas.store,
        base_dir=loaded.base_dir,
        migrate=config.sagas.migrate,
        lease_seconds=config.sagas.lease,
        default_timeout=config.upstream.timeout,
        services=config.services,
        redact_headers=config.redact.headers,
        redact_fields=config.redact.fields,
        encryption_keys=config.sagas.encryption_keys,
        callback_url=config.callback_url(),
    )
