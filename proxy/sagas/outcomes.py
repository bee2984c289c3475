"""Applying a completion, however it came: an HTTP callback or a broker's completion message.

Both carry a token and the same body, ``{"outcome": "success" | "failure", "result": <any JSON>}``
or ``{"outcome": "heartbeat"}``. ``parse_callback`` reads the body; ``apply_outcome`` records
the outcome for the step waiting on the token (the store decides, in the statement that writes:
``SagaStore.callback``), logs it without the token, counts an applied one in
``saga_callbacks_total{via, outcome}``, and after a recorded success or failure resumes the
saga in this replica. ``REJECTED`` names the ``saga_callback_rejected_total`` reason of every
verdict that refuses a completion; the caller counts those (the HTTP endpoint itself, a broker
consumer through ``saga_runner.brokers.settling.settle``).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from proxy.errors import BadCallback
from proxy.metrics import SidecarMetrics
from proxy.sagas.service import SagaService
from saga_runner.awaits import (
    CALLBACK_OUTCOMES,
    AwaitOutcome,
    CallbackAnswer,
    Verdict,
    token_hash,
    well_formed,
)
from saga_runner.brokers.base import RejectReason
from saga_runner.errors import StoreError, UnstorableJson
from saga_runner.storable import parse_json

log = logging.getLogger("saga_sidecar.saga")

VERDICT_DETAIL: Final = {
    Verdict.RECORDED: "recorded",
    Verdict.SAME: "this outcome was already recorded",
    Verdict.CONFLICT: "a different outcome was already recorded for this step",
    Verdict.UNKNOWN: "no step waits for a callback with this token",
    Verdict.GONE: "the step no longer waits for its outcome (timeout, deadline or abort)",
}
"""What each verdict means, in the answer or the log line that reports it."""

REJECTED: Final = {
    Verdict.CONFLICT: RejectReason.CONFLICT,
    Verdict.UNKNOWN: RejectReason.UNKNOWN_TOKEN,
    Verdict.GONE: RejectReason.NOT_WAITING,
}
"""The ``reason`` of ``saga_callback_rejected_total`` for each refusal."""


def parse_callback(raw: bytes) -> tuple[AwaitOutcome, Any]:
    """The outcome and result of a callback body.

    Raises:
        BadCallback: not a JSON object with a known ``outcome`` (and, besides, only ``result``),
            or JSON a saga store cannot keep (``NaN``, ``\\u0000``, nested too deep ...).
    """
    try:
        document = parse_json(raw)
    except UnstorableJson as exc:
        raise BadCallback(
            f"the body is not JSON every saga store can keep: {exc}", RejectReason.BAD_JSON
        ) from None
    if not isinstance(document, dict):
        raise BadCallback(
            'the body must be a JSON object like {"outcome": "success"}', RejectReason.BAD_BODY
        )
    extra = sorted(set(document).difference({"outcome", "result"}))
    if extra:
        raise BadCallback(
            f"unknown member {extra[0]!r} (only outcome and result)", RejectReason.BAD_BODY
        )
    outcome = document.get("outcome")
    if outcome not in CALLBACK_OUTCOMES:
        names = ", ".join(o.value for o in CALLBACK_OUTCOMES)
        raise BadCallback(f"outcome must be one of {names}", RejectReason.BAD_BODY)
    return AwaitOutcome(outcome), document.get("result")


async def apply_outcome(
    service: SagaService,
    metrics: SidecarMetrics,
    via: str,
    token: str,
    outcome: AwaitOutcome,
    result: Any,
) -> CallbackAnswer:
    """Record ``outcome`` (and ``result``) for the step waiting on ``token``.

    Args:
        service: the open saga service.
        metrics: where an applied completion is counted.
        via: how it came, the ``via`` label: ``http``, or the broker's configured name.
        token: the callback token (a malformed one is unknown, like a forged one).
        outcome: success, failure or heartbeat.
        result: the result reported with it (redacted before it is stored).

    Returns:
        The store's answer; a refusal (``REJECTED``) is left to the caller to count.

    Raises:
        StoreError: the saga store could not be used; nothing was recorded.
        RuntimeUnavailable: the saga runtime is not open (starting or stopping).
    """
    if not well_formed(token):
        return CallbackAnswer(Verdict.UNKNOWN)
    runtime = service.runtime
    # Stored like a step's answer: the fields of ``redact.fields`` never reach the records.
    stored = runtime.engine.redactor.redact_body(result)
    answer = await runtime.store.callback(token_hash(token), outcome, stored)
    log.info(
        "callback %s via %s for saga %s: %s",
        outcome.value,
        via,
        answer.saga_id,
        answer.verdict.value,
        extra={
            "saga_id": answer.saga_id,
            "saga": answer.saga_name,
            "event": "callback",
            "via": via,
            "outcome": outcome.value,
            "verdict": answer.verdict.value,
        },
    )
    if answer.verdict in REJECTED:
        return answer
    metrics.saga_callbacks.labels(via, outcome.value).inc()
    if answer.verdict is Verdict.RECORDED and outcome.reported and answer.saga_id is not None:
        # Recorded: the saga is due. This replica goes on with it now if nobody holds it (the
        # run that parked it checks again after its write, in case it was not parked yet);
        # if the claim fails, any replica's recovery loop finds the saga due.
        try:
            await service.recovery.continue_now(answer.saga_id)
        except StoreError as exc:
            log.warning("saga %s: recorded, not resumed here: %s", answer.saga_id, exc)
    return answer
