"""The configured brokers by name: built from settings, opened together, closed together.

``BrokerRegistry`` maps each name of ``sagas.brokers`` to its adapter, picked by URL scheme
(``saga_runner.brokers.urls``). ``open`` starts every connection in the background (a broker
that is down delays nothing); ``close`` cancels consumers and disconnects. The engine publishes
with ``registry[name].publish(...)``; the hosting starts consumers with ``registry[name].consume``.
``reach`` connects once, for ``saga-sidecar check --connect``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping

from saga_runner.brokers import jetstream, rabbitmq
from saga_runner.brokers.base import BrokerAdapter, BrokerSettings, RejectCounter
from saga_runner.brokers.connecting import describe
from saga_runner.brokers.jetstream import JetStreamBroker
from saga_runner.brokers.rabbitmq import RabbitMQBroker
from saga_runner.brokers.urls import BrokerKind, broker_kind
from saga_runner.errors import BrokerUnavailable


def adapter_for(name: str, settings: BrokerSettings, on_rejected: RejectCounter) -> BrokerAdapter:
    """The adapter for the broker kind ``settings.url`` names (not yet opened).

    Raises:
        ValueError: the URL's scheme names no supported broker.
    """
    if broker_kind(settings.url) is BrokerKind.RABBITMQ:
        return RabbitMQBroker(name, settings, on_rejected)
    return JetStreamBroker(name, settings, on_rejected)


async def reach(name: str, url: str) -> None:
    """Connect to the broker once and disconnect, as ``saga-sidecar check --connect`` does.

    Raises:
        BrokerUnavailable: it could not be reached, saying why (its cause: the client's error).
    """
    attempt = rabbitmq.reach if broker_kind(url) is BrokerKind.RABBITMQ else jetstream.reach
    try:
        await attempt(name, url)
    except BrokerUnavailable:
        raise
    except Exception as exc:
        raise BrokerUnavailable(name, describe(exc)) from exc


class BrokerRegistry(Mapping[str, BrokerAdapter]):
    """Every configured broker's adapter, by name."""

    def __init__(self, adapters: Mapping[str, BrokerAdapter]) -> None:
        self._adapters = dict(adapters)

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, BrokerSettings], on_rejected: RejectCounter
    ) -> BrokerRegistry:
        """One adapter per named broker; each counts rejected deliveries with ``on_rejected``."""
        return cls({name: adapter_for(name, s, on_rejected) for name, s in settings.items()})

    def __getitem__(self, name: str) -> BrokerAdapter:
        return self._adapters[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._adapters)

    def __len__(self) -> int:
        return len(self._adapters)

    async def open(self) -> None:
        """Start connecting every broker (returns at once; outages are retried)."""
        for adapter in self._adapters.values():
            await adapter.open()

    async def close(self, grace: float) -> None:
        """Cancel every consumer (``grace`` seconds for deliveries being handled), disconnect."""
        await asyncio.gather(*(adapter.close(grace) for adapter in self._adapters.values()))
