"""A step service behind its own saga-sidecar: a stored failure is not retried, an operator's
retry makes a real new attempt under a new key generation.

The payments service sits behind a real saga-sidecar (idempotency on, the default
``unknown_outcome: hold``), so the refund's first 500 is stored for its key and every later call
with that key gets it back with ``Idempotent-Replayed: true``. The saga's shipping step is refused,
the refund fails; then the service is fixed and an operator retries the saga through the admin API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from conftest import Upstream

from proxy.app import build_apps
from proxy.config import LoadedConfig, SidecarConfig
from saga_runner.records import SagaStep
from saga_runner.runs import compensation_replayed, step_key
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from sagas.conftest import SidecarFactory
from sagas.harness import ORDER
from sagas.services import Call, FakeServices, Reply


async def service_sidecar(
    services: FakeServices,
    tmp_path: Path,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> str:
    """A saga-sidecar in front of the payments service; its public URL."""
    config = SidecarConfig.model_validate(
        {"upstream": {"url": services.urls["payments"], "timeout": "5s"}}
    )
    apps = build_apps(LoadedConfig(path=tmp_path / "payments-sidecar.yaml", config=config))
    served = await upstream_server(apps.public)
    return served.url


def refund_calls(services: FakeServices) -> list[Call]:
    """The refunds the payments service itself received (not the ones its sidecar replayed)."""
    return [c for c in services.calls_to("payments") if c.raw_path.endswith("/refund")]


async def test_a_replayed_failure_is_not_retried_and_an_operator_retry_makes_a_new_attempt(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    tmp_path: Path,
    upstream_server: Callable[..., Awaitable[Upstream]],
    client: aiohttp.ClientSession,
) -> None:
    payments = await service_sidecar(services, tmp_path, upstream_server)
    sidecar = await make_sidecar(services={"payments": payments})
    services.always("shipping", "POST /shipments", Reply(400, {"error": "no courier"}))
    refund = "POST /charges/by-saga/*/refund"
    services.plan("payments", refund, Reply(500, {"error": "ledger down"}))

    status, _, _ = await sidecar.post(client, "/api/orders", ORDER)
    saga = await sidecar.only_saga()
    saga_id = saga.instance.id
    assert saga.instance.status is SagaStatus.FAILED, (status, saga)
    refunds = refund_calls(services)
    # The service got the refund once. The retry after its 500 got the stored 500 back
    # (replayed), and a replay is not retried: two attempts, not the three allowed.
    assert [c.key for c in refunds] == [f"{saga_id}:charge:compensation"]
    charge_undo = [
        a for a in saga.attempts if a.kind is AttemptKind.COMPENSATION and a.step_order == 1
    ]
    assert [a.status_code for a in charge_undo] == [500, 500]
    charge = saga.steps[1]
    headers = {k.lower(): v for k, v in charge.compensate_data["response"]["headers"].items()}
    assert headers.get("idempotent-replayed") == "true"
    assert charge.key_generation == 1

    # The cause is fixed (the planned 500 is used up); an operator retries the saga.
    async with client.post(
        f"{sidecar.admin_url}/sagas/{saga_id}/retry", json={"actor": "alice"}
    ) as response:
        assert response.status == 202, await response.text()
    final = await sidecar.finished(saga_id)
    assert final.status is SagaStatus.COMPENSATED

    refunds = refund_calls(services)
    assert [c.key for c in refunds] == [
        f"{saga_id}:charge:compensation",
        f"{saga_id}:charge:compensation:2",
    ]
    detail = await sidecar.runtime.store.get(saga_id)
    assert detail.steps[1].key_generation == 2
    retry = next(e for e in detail.events if e.action == "retry")
    assert retry.detail["key_generations"] == {"charge": 2}
    async with client.get(f"{sidecar.admin_url}/sagas/{saga_id}") as response:
        shown = await response.json()
    assert [s["key_generation"] for s in shown["steps"]] == [1, 2, 1]
    # The reservation was undone once, under its unchanged first-generation key.
    undo_reserve = [c for c in services.calls_to("inventory") if c.method == "DELETE"]
    assert [c.key for c in undo_reserve] == [f"{saga_id}:reserve:compensation"]


def step_row(status: StepStatus, response: object) -> SagaStep:
    """A stored step whose compensation got ``response``."""
    now = datetime.now(UTC)
    return SagaStep(
        1, "s", 1, "charge", status, None, {"response": response}, None, 0, 3, None, None, now,
        now, 1, 1, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "response", "bumped"),
    [
        (StepStatus.COMPENSATION_FAILED, {"headers": {"Idempotent-Replayed": "true"}}, True),
        (StepStatus.COMPENSATION_FAILED, {"headers": {"idempotent-replayed": "TRUE"}}, True),
        # A real (not replayed) failure, or a timeout: the same key is the safe one.
        (StepStatus.COMPENSATION_FAILED, {"status": 500, "headers": {}}, False),
        (StepStatus.COMPENSATION_FAILED, {"status": None, "headers": {}}, False),
        (StepStatus.COMPENSATION_FAILED, None, False),
        (StepStatus.COMPENSATED, {"headers": {"Idempotent-Replayed": "true"}}, False),
    ],
)
def test_only_a_compensation_that_failed_with_a_replayed_answer_gets_a_new_key(
    status: StepStatus, response: object, bumped: bool
) -> None:
    assert compensation_replayed(step_row(status, response)) is bumped


def test_generation_one_keeps_the_plain_key() -> None:
    assert step_key("s", "charge", AttemptKind.COMPENSATION) == "s:charge:compensation"
    assert step_key("s", "charge", AttemptKind.COMPENSATION, 3) == "s:charge:compensation:3"
    assert step_key("s", "charge", AttemptKind.ACTION) == "s:charge:action"
