"""A saga resumed from its records renders its calls from the real input, never a placeholder.

The stored input and headers are redacted. With ``sagas.encryption_keys`` the redacted values
are sealed beside them and opened to render a resumed run's calls; without keys a call needing
one fails with a clear reason and the placeholder is never sent. The sealed copy and the values
never show in the operator views or the logs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from typing import Any

import pytest

from saga_runner.redact import REDACTED
from saga_runner.seal import SEALED
from saga_runner.states import SagaStatus, StepStatus
from saga_runner.views import OutputRedactor, detail_view
from sagas.conftest import LEASE_SECONDS, EngineFactory
from sagas.harness import EngineHarness, order_saga, with_step
from sagas.services import FakeServices, Reply

CARD = "4111111111111111"
API_KEY = "sk-live-7f3a9c"
ORDER = {"order_no": "A-1", "amount": 12.5, "items": [1], "payer": {"card_number": CARD}}
HEADERS = {"X-Api-Key": API_KEY}
REDACT = (("X-Api-Key",), ("card_number",))


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def charging_saga(*, header: bool = True) -> dict[str, Any]:
    """The order saga whose charge sends the card number (and the API key header)."""
    action: dict[str, Any] = {
        "body": {"amount": "{{ input.amount }}", "card_number": "{{ input.payer.card_number }}"}
    }
    if header:
        action["headers"] = {"X-Api-Key": "{{ headers.x-api-key }}"}
    return with_step(order_saga(), "charge", action=action)


async def stop_mid_charge(engine: EngineHarness, services: FakeServices) -> str:
    """Start the saga and cut its run off while the charge call is in flight."""
    created = await engine.runtime.engine.start(engine.definition, ORDER, HEADERS, None)
    assert created.lease is not None
    run = engine.runtime.engine.execute(engine.definition, created.lease, HEADERS, input_data=ORDER)
    task = asyncio.create_task(run)
    await services.wait_for_calls(2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return created.saga.id


async def resume(engine: EngineHarness, saga_id: str) -> SagaStatus:
    """Claim the saga as another replica would, and drive it to its end."""
    owner = engine.runtime.engine.settings.owner
    claims = await engine.runtime.store.claim_due(owner, LEASE_SECONDS, 10)
    assert [claim.saga.id for claim in claims] == [saga_id]
    final = await engine.runtime.engine.execute(engine.definition, claims[0].lease)
    return final.status


async def cut_off_and_resumed(
    make_engine: EngineFactory,
    services: FakeServices,
    first_keys: tuple[str, ...],
    second_keys: tuple[str, ...],
    saga: dict[str, Any],
) -> tuple[str, SagaStatus, EngineHarness]:
    gate = asyncio.Event()
    services.plan("payments", "POST /charges", Reply(201, {"id": "lost"}, gate=gate))
    first = await make_engine(saga, redact=REDACT, keys=first_keys)
    second = await make_engine(saga, redact=REDACT, keys=second_keys)
    saga_id = await stop_mid_charge(first, services)
    status = await resume(second, saga_id)
    gate.set()
    return saga_id, status, second


async def test_a_resumed_saga_renders_the_real_redacted_values_with_keys_set(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    key = new_key()
    saga_id, status, engine = await cut_off_and_resumed(
        make_engine, services, (key,), (key,), charging_saga()
    )

    assert status is SagaStatus.COMPLETED
    lost, resent = services.calls_to("payments")
    assert resent.body == lost.body == {"amount": 12.5, "card_number": CARD}
    assert resent.headers["x-api-key"] == lost.headers["x-api-key"] == API_KEY
    stored = await engine.runtime.store.get(saga_id)
    assert stored.instance.input["payer"]["card_number"] == REDACTED
    started = next(e for e in stored.events if e.action == "started")
    assert isinstance(started.detail, dict)
    assert started.detail["headers"]["x-api-key"] == REDACTED
    assert CARD not in json.dumps(started.detail) and API_KEY not in json.dumps(started.detail)


async def test_a_rotated_key_still_opens_what_the_old_key_sealed(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    old, new = new_key(), new_key()
    saga_id, status, engine = await cut_off_and_resumed(
        make_engine, services, (old,), (new, old), charging_saga()
    )

    assert status is SagaStatus.COMPLETED
    assert [c.body["card_number"] for c in services.calls_to("payments")] == [CARD, CARD]
    # The new key seals what starts from now on.
    created = await engine.runtime.engine.start(engine.definition, ORDER, HEADERS, None)
    fresh = await engine.runtime.store.get(created.saga.id)
    older = await engine.runtime.store.get(saga_id)
    kids = [
        next(e for e in d.events if e.action == "started").detail[SEALED]["kid"]  # type: ignore[index, call-overload]
        for d in (older, fresh)
    ]
    assert kids[0] != kids[1]


async def test_without_keys_the_resumed_step_fails_with_a_reason_and_sends_no_placeholder(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    saga_id, status, engine = await cut_off_and_resumed(
        make_engine, services, (), (), charging_saga(header=False)
    )

    assert status is SagaStatus.COMPENSATED
    calls = services.calls_to("payments")
    assert all(REDACTED not in json.dumps(c.body) for c in calls)
    assert [c.body for c in calls if c.raw_path == "/charges"] == [
        {"amount": 12.5, "card_number": CARD}
    ]
    detail = await engine.runtime.store.get(saga_id)
    # Cut off mid-call, the charge may have taken effect: it was compensated.
    assert detail.steps[1].status is StepStatus.COMPENSATED
    assert detail.instance.failure_reason == (
        "step charge: input.payer.card_number was redacted when stored and no"
        " sagas.encryption_keys are set to recover it"
    )


@pytest.mark.parametrize("keys", [True, False], ids=["keys", "no-keys"])
async def test_the_sealed_copy_and_the_values_never_show_in_views_or_logs(
    make_engine: EngineFactory,
    services: FakeServices,
    caplog: pytest.LogCaptureFixture,
    keys: bool,
) -> None:
    caplog.set_level(logging.DEBUG, logger="saga_sidecar")
    key = (new_key(),) if keys else ()
    saga_id, _, engine = await cut_off_and_resumed(make_engine, services, key, key, charging_saga())

    detail = await engine.runtime.store.get(saga_id)
    started = next(e for e in detail.events if e.action == "started")
    assert isinstance(started.detail, dict)
    assert (SEALED in started.detail) is keys
    shown = json.dumps(detail_view(detail, OutputRedactor(engine.runtime.engine.redactor)))
    assert SEALED not in shown
    for secret in (CARD, API_KEY):
        assert secret not in shown
        assert secret not in caplog.text
    if keys:
        assert started.detail[SEALED]["ct"] not in shown  # type: ignore[index, call-overload]
        assert started.detail[SEALED]["ct"] not in caplog.text  # type: ignore[index, call-overload]
