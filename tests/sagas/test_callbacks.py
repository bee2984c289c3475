"""Steps that await a callback: the saga parks, the callback endpoint's every answer, what a
recorded outcome does (the saga goes on, or compensates), and where tokens never appear.

In-process sidecars on real sockets, both saga stores; the fake payments service answers the
charge with ``201`` (accepted), and the test plays the payment gateway calling back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest
import yaml
from saga_operator.harness import run_cli

from saga_runner.states import SagaStatus, StepStatus
from sagas.awaiting import (
    awaiting_saga,
    call_back,
    charge_token,
    start_order,
    step_in,
    waiting_charge,
)
from sagas.conftest import SidecarFactory
from sagas.harness import PROBLEM, Database
from sagas.services import FakeServices


async def test_a_waiting_step_parks_the_saga_without_a_lease_until_its_callback(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    saga_id = await start_order(sidecar, client)
    token = await charge_token(sidecar)

    step = await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    saga = await sidecar.runtime.store.get_instance(saga_id)
    assert saga.status is SagaStatus.RUNNING
    assert saga.owner is None and saga.lease_expires_at is None
    assert step.await_kind == "callback" and step.waiting_since is not None
    assert step.wait_until is not None and saga.next_run_at == step.wait_until
    assert [c.line for c in services.calls_to("shipping")] == []

    status, _, body = await call_back(
        client, sidecar, token, {"outcome": "success", "result": {"capture": "c-1"}}
    )
    assert status == 202, body
    assert body["saga_id"] == saga_id
    assert (await sidecar.finished(saga_id)).status is SagaStatus.COMPLETED
    detail = await sidecar.runtime.store.get(saga_id)
    assert detail.instance.response["body"]["charge"] == {"capture": "c-1"}
    assert [s.status for s in detail.steps] == [StepStatus.SUCCEEDED] * 3


async def test_every_call_of_an_awaiting_step_carries_a_fresh_callback_url(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    await start_order(sidecar, client)
    await start_order(sidecar, client, "A-2")
    first, second = await charge_token(sidecar, 0), await charge_token(sidecar, 1)

    header = sidecar.services.calls_to("payments")[0].headers["saga-callback"]
    assert header == f"http://127.0.0.1:8080/_saga/callbacks/{first}"
    assert len(first) == 43 and first != second
    assert "saga-callback" not in sidecar.services.calls_to("inventory")[0].headers


async def test_a_repeated_callback_gets_200_and_a_different_outcome_409(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    saga_id, token = await waiting_charge(sidecar, client)

    assert (await call_back(client, sidecar, token, {"outcome": "success", "result": 1}))[0] == 202
    await sidecar.finished(saga_id)
    status, _, body = await call_back(client, sidecar, token, {"outcome": "success", "result": 2})
    assert (status, body["status"]) == (200, "same")
    status, headers, body = await call_back(client, sidecar, token, {"outcome": "failure"})
    assert status == 409 and headers["Content-Type"] == PROBLEM, body
    status, _, _ = await call_back(client, sidecar, token, {"outcome": "heartbeat"})
    assert status == 409
    detail = await sidecar.runtime.store.get(saga_id)
    assert detail.instance.response["body"]["charge"] == 1


async def test_a_failure_callback_compensates_the_accepted_step_too(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    saga_id, token = await waiting_charge(sidecar, client)

    status, _, _ = await call_back(
        client, sidecar, token, {"outcome": "failure", "result": {"code": "declined"}}
    )
    assert status == 202

    saga = await sidecar.finished(saga_id)
    assert saga.status is SagaStatus.COMPENSATED
    assert saga.failure_reason == "step charge: the service reported failure"
    lines = services.lines()
    assert lines[-2:] == [
        f"payments POST /charges/by-saga/{saga_id}/refund",
        "inventory DELETE /reservations/inventory-1",
    ]
    assert not services.calls_to("shipping")
    status, _, _ = await call_back(client, sidecar, token, {"outcome": "success"})
    assert status == 409


@pytest.mark.parametrize(
    "token",
    [
        "x" * 43,  # well formed, never issued
        "short",
        "tok~en.with%20space",
        "a" * 300,
    ],
)
async def test_an_unknown_or_malformed_token_gets_404(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession, token: str
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    status, headers, body = await call_back(client, sidecar, token, {"outcome": "success"})
    assert status == 404 and headers["Content-Type"] == PROBLEM
    assert body["status"] == 404


async def test_bad_bodies_get_400_a_huge_one_413_and_other_methods_405(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    saga_id, token = await waiting_charge(sidecar, client)

    for bad in (
        b"not json",
        b"[]",
        b'{"outcome": "maybe"}',
        b'{"outcome": "success", "x": 1}',
        b"",
    ):
        status, headers, body = await call_back(client, sidecar, token, data=bad)
        assert status == 400 and headers["Content-Type"] == PROBLEM, (bad, body)
    huge = json.dumps({"outcome": "success", "result": "x" * (1024**2)}).encode()
    status, headers, _ = await call_back(client, sidecar, token, data=huge)
    assert status == 413 and headers["Content-Type"] == PROBLEM
    status, headers, _ = await call_back(client, sidecar, token, method="GET", data=b"")
    assert status == 405 and headers["Allow"] == "POST"
    # None of it touched the step.
    step = await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    assert step.await_outcome is None


async def test_tokens_are_stored_hashed_and_appear_in_no_log_record_or_admin_answer(
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
    database: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sidecar = await make_sidecar(awaiting_saga())
    saga_id, token = await waiting_charge(sidecar, client)
    await call_back(client, sidecar, "y" * 43, {"outcome": "success"})
    await call_back(client, sidecar, token, {"outcome": "success"})
    await sidecar.finished(saga_id)

    async with client.get(f"{sidecar.admin_url}/sagas/{saga_id}") as response:
        shown = await response.text()
    async with client.get(f"{sidecar.admin_url}/dashboard?saga={saga_id}") as response:
        shown += await response.text()
    async with client.get(f"{sidecar.admin_url}/metrics") as response:
        shown += await response.text()
    stored = await database.dump()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for text in (shown, stored, logged):
        assert token not in text
    assert "/_saga/callbacks/<redacted>" in logged


async def test_the_admin_api_the_dashboard_and_the_cli_show_a_waiting_step(
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
    database: Database,
    services: FakeServices,
    tmp_path: Path,
) -> None:
    sidecar = await make_sidecar(awaiting_saga(timeout="15m", deadline="1h"))
    saga_id = await start_order(sidecar, client)
    token = await charge_token(sidecar)
    step = await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    assert step.waiting_since is not None and step.wait_until is not None

    async with client.get(f"{sidecar.admin_url}/sagas/{saga_id}") as response:
        shown = await response.json()
    charge = shown["steps"][1]
    assert charge["status"] == "waiting"
    assert charge["await"] == {
        "kind": "callback",
        "waiting_since": step.waiting_since.isoformat(),
        "wait_until": step.wait_until.isoformat(),
        "timeout_seconds": 900.0,
        "outcome": None,
        "result": None,
    }
    assert shown["deadline_at"] is not None
    async with client.get(f"{sidecar.admin_url}/dashboard?saga={saga_id}") as response:
        page = await response.text()
    assert "waiting for its callback since" in page
    assert step.wait_until.strftime("%Y-%m-%d %H:%M:%S") in page

    config = tmp_path / "cli.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": {"url": services.urls["inventory"]},
                "services": dict(services.urls),
                "sagas": {"store": database.url, "definitions": ["sagas/*.yaml"]},
            }
        ),
        encoding="utf-8",
    )
    printed = await run_cli("sagas", "show", saga_id, "--config", str(config))
    assert printed.code == 0, printed.stderr
    assert f"waiting for its callback since {step.waiting_since.isoformat()}" in printed.stdout
    assert f"until {step.wait_until.isoformat()}" in printed.stdout
    for text in (json.dumps(shown), page, printed.stdout):
        assert token not in text


async def test_a_callback_result_is_stored_redacted_like_a_step_answer(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession, database: Database
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    saga_id, token = await waiting_charge(sidecar, client)
    result = {"capture": "c-9", "card_number": "4111111111111111"}

    assert (await call_back(client, sidecar, token, {"outcome": "success", "result": result}))[
        0
    ] == 202

    await sidecar.finished(saga_id)
    detail = await sidecar.runtime.store.get(saga_id)
    assert detail.steps[1].await_result == {"capture": "c-9", "card_number": "[REDACTED]"}
    assert detail.instance.response["body"]["charge"]["card_number"] == "[REDACTED]"
    assert "4111111111111111" not in await database.dump()
