"""Which settings a reload applies, and which keep their value until a restart (``plan``)."""

from __future__ import annotations

from typing import Any

from proxy.config import SidecarConfig
from proxy.reload.plan import plan

BASE: dict[str, Any] = {
    "listen": "127.0.0.1:8080",
    "upstream": {"url": "http://127.0.0.1:3000", "timeout": "30s"},
    "services": {"orders": "http://127.0.0.1:3001", "payments": "http://127.0.0.1:3002"},
    "idempotency": {"store": "memory://", "ttl": "24h", "key_secret": "one"},
    "sagas": {"store": "sqlite:///sagas.db", "definitions": ["sagas/*.yaml"]},
    "admin": {"token": "old"},
    "log": {"level": "info", "format": "json"},
}


def config(**changes: Any) -> SidecarConfig:
    merged = dict(BASE)
    for key, value in changes.items():
        section = merged.get(key)
        merged[key] = {**section, **value} if isinstance(section, dict) else value
    return SidecarConfig.model_validate(merged)


def test_reloadable_settings_take_their_new_values() -> None:
    new = config(
        idempotency={"ttl": "1h", "require_key": True},
        admin={"token": "new"},
        log={"level": "debug"},
        redact={"fields": ["iban"]},
        services={"orders": "http://10.0.0.9:80", "refunds": "http://10.0.0.7:80"},
        sagas={"max_input": "1MiB", "definitions": ["more/*.yaml"]},
    )

    planned = plan(config(), new)

    assert planned.kept == ()
    assert set(planned.applied) == {
        "idempotency.ttl",
        "idempotency.require_key",
        "admin.token",
        "log.level",
        "redact.fields",
        "services.orders",
        "services.refunds",
        "sagas.max_input",
        "sagas.definitions",
    }
    assert SidecarConfig.model_validate(planned.data) == new


def test_listeners_stores_pools_and_key_names_keep_their_old_values() -> None:
    old = config()
    new = config(
        listen="127.0.0.1:9090",
        workers=2,
        upstream={"url": "http://127.0.0.1:4000", "timeout": "5s"},
        idempotency={"store": "redis://127.0.0.1:6379/0", "key_secret": "two", "ttl": "1h"},
        sagas={"store": "sqlite:///other.db", "lease": "30s"},
        log={"format": "text"},
        reload={"watch": True},
    )

    planned = plan(old, new)
    kept = SidecarConfig.model_validate(planned.data)

    assert planned.applied == ("idempotency.ttl",)
    assert set(planned.kept) == {
        "listen",
        "workers",
        "upstream.url",
        "upstream.timeout",
        "idempotency.store",
        "idempotency.key_secret",
        "sagas.store",
        "sagas.lease",
        "log.format",
        "reload.watch",
    }
    assert kept.listen == old.listen and kept.workers == 1
    assert kept.upstream == old.upstream and kept.sagas == old.sagas
    assert kept.idempotency.store == "memory://" and kept.idempotency.key_secret == "one"
    assert kept.idempotency.ttl == 3600.0


def test_a_removed_service_stays_for_the_sagas_still_calling_it() -> None:
    new = SidecarConfig.model_validate({**BASE, "services": {"orders": "http://127.0.0.1:3001"}})

    planned = plan(config(), new)

    assert planned.kept == ("services.payments",)
    assert SidecarConfig.model_validate(planned.data).services == BASE["services"]


def test_a_sagas_section_added_or_removed_waits_for_a_restart() -> None:
    without = SidecarConfig.model_validate({k: v for k, v in BASE.items() if k != "sagas"})

    assert plan(config(), without).kept == ("sagas",)
    assert plan(without, config()).kept == ("sagas",)
    assert SidecarConfig.model_validate(plan(without, config()).data).sagas is None
