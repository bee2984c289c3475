"""Completion messages: what arrives on a broker's ``callbacks`` finishes a waiting step.

``completions_ctx`` starts, once the saga service is open, one consumer per broker of
``sagas.brokers``; its handler, ``CompletionHandler``, applies a message as the HTTP callback
endpoint applies a POST (``proxy.sagas.outcomes``): the token is the ``saga-callback-token``
header, the body the callback's JSON. A completion recorded, or the same outcome again, is
counted in ``saga_callbacks_total{via=<broker name>, outcome}`` and acknowledged once committed;
one that can never be applied raises ``UnusableMessage`` (acknowledged, logged without the
token and counted by reason, by ``saga_runner.brokers.settling.settle``); a store that is
unavailable lets the error through, so the broker delivers the message again later.

At cleanup the consumers stop (deliveries being handled get the shutdown grace) before the saga
service closes: ``completions_ctx`` is registered after ``saga_service_ctx``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.errors import BadCallback
from proxy.keys import BROKERS, CONFIG, METRICS, SAGAS
from proxy.metrics import SidecarMetrics
from proxy.sagas.outcomes import REJECTED, VERDICT_DETAIL, apply_outcome, parse_callback
from proxy.sagas.service import SagaService
from saga_runner.brokers.base import CALLBACK_TOKEN_HEADER, Delivery, RejectReason
from saga_runner.errors import UnusableMessage


class CompletionHandler:
    """The consume handler of one broker: applies each delivery as a callback (see the module
    docstring); returns once the outcome is committed, or raises."""

    def __init__(self, broker: str, service: SagaService, metrics: SidecarMetrics) -> None:
        self.broker = broker
        self._service = service
        self._metrics = metrics

    async def __call__(self, delivery: Delivery) -> None:
        """Apply ``delivery``.

        Raises:
            UnusableMessage: no token, a body that is not a callback's JSON, an unknown token, a
                different outcome already recorded, or a step that no longer waits.
            StoreError: the saga store is unavailable (the message is delivered again).
            RuntimeUnavailable: the saga runtime is not open (likewise).
        """
        token = delivery.headers.get(CALLBACK_TOKEN_HEADER)
        if not token:
            raise UnusableMessage(RejectReason.MISSING_TOKEN, f"no {CALLBACK_TOKEN_HEADER} header")
        try:
            outcome, result = parse_callback(delivery.body)
        except BadCallback as exc:
            raise UnusableMessage(exc.reason, str(exc)) from None
        answer = await apply_outcome(
            self._service, self._metrics, self.broker, token, outcome, result
        )
        reason = REJECTED.get(answer.verdict)
        if reason is not None:
            saga = f" (saga {answer.saga_id})" if answer.saga_id is not None else ""
            raise UnusableMessage(reason, f"{VERDICT_DETAIL[answer.verdict]}{saga}")


async def completions_ctx(app: web.Application) -> AsyncIterator[None]:
    """Consume every configured broker's ``callbacks`` while the saga service is open."""
    service, metrics = app[SAGAS], app[METRICS]
    registry = app[BROKERS]
    metrics.declare_callback_vias(registry)
    subscriptions = [
        adapter.consume(CompletionHandler(name, service, metrics))
        for name, adapter in registry.items()
    ]
    yield
    grace = app[CONFIG].config.shutdown_grace
    await asyncio.gather(*(subscription.cancel(grace) for subscription in subscriptions))
