"""The configured message brokers as the proxy hosts them.

``brokers_ctx`` opens every broker of ``sagas.brokers`` with the public app (connecting in the
background: a broker that is down stops nothing), registers each one's connection as a readiness
probe named ``broker:NAME`` (``/readyz`` answers 503 naming it while it is down), counts
completion messages a handler rejected in ``saga_callback_rejected_total{reason}``, and closes
them all at cleanup, after the saga service (which publishes through them) has stopped. Their
consumers are started by ``proxy.sagas.completions``, once the saga service is open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from proxy.config import BrokerConfig
from proxy.keys import BROKERS, CONFIG, METRICS, READINESS
from saga_runner.brokers.base import BrokerSettings
from saga_runner.brokers.registry import BrokerRegistry


def broker_settings(brokers: Mapping[str, BrokerConfig]) -> dict[str, BrokerSettings]:
    """The registry's settings for each configured broker."""
    return {
        name: BrokerSettings(url=broker.url, callbacks=broker.callbacks)
        for name, broker in brokers.items()
    }


def readiness_name(broker: str) -> str:
    """The name ``/readyz`` gives a broker that is down."""
    return f"broker:{broker}"


async def brokers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the configured brokers (``BROKERS``) for the app's lifetime."""
    config = app[CONFIG].config
    brokers = config.sagas.brokers if config.sagas is not None else {}
    rejected = app[METRICS].saga_callback_rejected
    registry = BrokerRegistry.from_settings(
        broker_settings(brokers), lambda reason: rejected.labels(reason).inc()
    )
    app[BROKERS] = registry
    await registry.open()
    for name, adapter in registry.items():
        app[READINESS].register(readiness_name(name), adapter.ready)
    yield
    await registry.close(config.shutdown_grace)
