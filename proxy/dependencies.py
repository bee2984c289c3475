"""The stores a config names, reached once each: what ``saga-sidecar check --connect`` tries.

Each ``Dependency`` is a store the sidecar needs at start: the Redis behind ``idempotency.store``
(not ``memory://``), the database behind ``sagas.store``, and each broker of ``sagas.brokers``
(RabbitMQ is connected to; NATS is connected to and asked for its JetStream account). ``reach``
connects to all of them at once, with the sidecar's own clients, and returns why each one that
failed did. The upstream app
and the saga services are not tried: a sidecar starts before (or without) them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.config import LoadedConfig
from proxy.errors import StoreUnavailable
from proxy.idempotency.store import store_from_url
from saga_runner.brokers.registry import reach as reach_broker
from saga_runner.brokers.urls import broker_kind
from saga_runner.errors import BrokerError, StoreError
from saga_runner.store import SagaStore
from saga_runner.store.postgres import redact_url


@dataclass(frozen=True)
class Dependency:
    """One store to reach: its kind, the setting that names it, and how to try it."""

    kind: str
    setting: str
    url: str
    attempt: Callable[[], Awaitable[None]]

    def describe(self, problem: str | None) -> str:
        """One line: ``KIND (SETTING): ok``, or the redacted URL and why it failed."""
        if problem is None:
            return f"{self.kind} ({self.setting}): ok"
        return f"{self.kind} ({self.setting}) {redact_url(self.url)}: {problem}"


def dependencies(loaded: LoadedConfig) -> list[Dependency]:
    """The stores ``loaded`` names, in the order of the config file."""
    config = loaded.config
    found = []
    store = config.idempotency.store
    if not store.startswith("memory:"):
        found.append(Dependency("redis", "idempotency.store", store, lambda: _redis(store)))
    if config.sagas is not None:
        url = config.sagas.store
        if url.startswith("sqlite:"):
            found.append(
                Dependency("sqlite", "sagas.store", url, lambda: _sqlite(url, loaded.base_dir))
            )
        else:
            found.append(
                Dependency("postgresql", "sagas.store", url, lambda: _saga_store(url, loaded))
            )
        for name, broker in config.sagas.brokers.items():
            found.append(_broker(name, broker.url))
    return found


def _broker(name: str, url: str) -> Dependency:
    return Dependency(
        broker_kind(url).value, f"sagas.brokers.{name}", url, lambda: reach_broker(name, url)
    )


async def reach(found: list[Dependency], seconds: float) -> list[str | None]:
    """Try every dependency at once, each for at most ``seconds``; for each, None when reached,
    else why it was not."""
    return list(await asyncio.gather(*(_try(d, seconds) for d in found)))


async def _try(dependency: Dependency, seconds: float) -> str | None:
    try:
        async with asyncio.timeout(seconds):
            await dependency.attempt()
    except TimeoutError:
        return f"cannot connect: no answer within {seconds:g}s"
    except (StoreUnavailable, StoreError, BrokerError, OSError, ValueError) as exc:
        return f"cannot connect: {_reason(exc)}"
    return None


def _reason(exc: BaseException) -> str:
    """The driver's message under the store's error (which repeats the URL), or a broker's
    reason, ending with the system's word for the socket error under it (``Connection
    refused``) when not given."""
    shown = exc.__cause__ if isinstance(exc, StoreUnavailable | StoreError) else None
    message = str(shown or exc) or type(shown or exc).__name__
    if isinstance(exc, BrokerError):
        message = exc.detail
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            word = os.strerror(cause.errno)
            if word.lower() not in message.lower():
                message = f"{message.rstrip('.')} ({word})"
            break
        cause = cause.__cause__ or cause.__context__
    return message


async def _redis(url: str) -> None:
    store = store_from_url(url)
    try:
        await store.ping()
    finally:
        await store.close()


async def _saga_store(url: str, loaded: LoadedConfig) -> None:
    store = await SagaStore.from_url(url, loaded.base_dir)
    try:
        await store.ping()
    finally:
        await store.close()


async def _sqlite(url: str, base_dir: Path) -> None:
    """The database file is read- and writable, or can be created (nothing is created here)."""
    name = url.removeprefix("sqlite:///").split("?", 1)[0]
    if name == ":memory:":
        return
    path = base_dir / name
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise OSError(f"{path} is not readable and writable by this user")
        return
    parent = next(p for p in path.parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"{path} does not exist and {parent} is not writable by this user")
