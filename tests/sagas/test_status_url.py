"""The status URL of async sagas: ``Location`` on the 202, ``GET`` it (same scope only),
``Prefer: wait=N``, and duplicates answered from the saga store marked as replays.

In-process sidecars built by ``build_apps`` on real sockets (default ``memory://`` idempotency
store), both saga stores; the upstream app is the fake ``inventory`` service, so a request it
received is a request the sidecar forwarded.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import Sidecar

from proxy.cli import main
from proxy.keys import SAGAS
from proxy.sagas.status import MAX_WAIT
from proxy.sagas.watch import POLL_INTERVAL
from sagas.awaiting import awaiting_saga, call_back, waiting_charge
from sagas.conftest import SidecarFactory
from sagas.harness import ORDER, PROBLEM, Database, SidecarHarness, order_saga, write_saga
from sagas.services import FakeServices, Reply

STATUS_PATH = "/_saga/sagas"
ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}
OFF = [{"path": "/api/orders", "enabled": False}]


def async_saga(**overrides: Any) -> dict[str, Any]:
    """The order saga in async mode."""
    return order_saga(mode="async", **overrides)


async def get(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """GET ``url``: status, headers and the JSON body."""
    async with client.get(url, headers=headers or {}) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def timed_get(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], Any, float]:
    """``get`` and the seconds it took."""
    started = time.monotonic()
    status, answer_headers, body = await get(client, url, headers)
    return status, answer_headers, body, time.monotonic() - started


async def trigger(
    sidecar: SidecarHarness, client: aiohttp.ClientSession, headers: dict[str, str] | None = None
) -> tuple[str, str]:
    """Start the async saga: its id and its ``Location``."""
    status, answer_headers, body = await sidecar.post(client, "/api/orders", ORDER, headers=headers)
    assert status == 202, body
    return body["saga_id"], answer_headers["Location"]


def gate_the_charge(services: FakeServices) -> asyncio.Event:
    """Hold the saga at its charge (answered ``{"id": "pay-1"}``) until the event is set."""
    gate = asyncio.Event()
    services.plan("payments", "POST /charges", Reply(201, {"id": "pay-1"}, gate=gate))
    return gate


async def held_until(
    client: aiohttp.ClientSession, url: str, gate: asyncio.Event
) -> tuple[int, dict[str, str], Any, float]:
    """GET ``url`` as Alice with ``Prefer: wait=10``, set ``gate`` once the request is held:
    the answer and the seconds it took after the gate opened."""
    waiting = asyncio.create_task(get(client, url, {**ALICE, "Prefer": "wait=10"}))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    opened = time.monotonic()
    gate.set()
    status, headers, body = await waiting
    return status, headers, body, time.monotonic() - opened


async def test_the_202_points_to_a_status_url_that_answers_running_then_the_response(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    gate = gate_the_charge(services)
    sidecar = await make_sidecar(async_saga())

    saga_id, location = await trigger(sidecar, client, ALICE)

    assert location == f"{STATUS_PATH}/{saga_id}"
    status, headers, body = await get(client, sidecar.url + location, ALICE)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    assert headers["Saga-Id"] == saga_id
    assert body == {"saga_id": saga_id, "saga_status": "running", "response": None}
    gate.set()
    await sidecar.finished(saga_id)
    status, _, body = await get(client, sidecar.url + location, ALICE)
    assert status == 200
    assert body["saga_status"] == "completed"
    assert body["response"] == {
        "status": 201,
        "body": {
            "reservation": "inventory-1",
            "charge": {"id": "pay-1"},
            "shipment": "shipping-1",
        },
    }


async def test_a_compensated_saga_answers_the_problem_the_sync_trigger_answers(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.always("payments", "POST /charges", Reply(402, {"error": "card declined"}))
    sync = order_saga(name="order_sync", trigger={"method": "POST", "path": "/api/sync"})
    sidecar = await make_sidecar(async_saga(), sync)
    sync_status, _, sync_problem = await sidecar.post(client, "/api/sync", ORDER, headers=ALICE)
    assert sync_status == 402

    saga_id, location = await trigger(sidecar, client, ALICE)
    await sidecar.finished(saga_id)
    status, _, body = await get(client, sidecar.url + location, ALICE)

    assert status == 200
    assert body["saga_id"] == saga_id and body["saga_status"] == "compensated"
    problem = body["response"]
    assert problem == {**sync_problem, "saga_id": saga_id}
    assert problem["type"] == "urn:saga-sidecar:problem:saga-compensated"
    assert problem["status"] == 402 and problem["failed_step"] == "charge"
    assert problem["step_answer"] == {"status": 402, "body": {"error": "card declined"}}


async def test_another_tenant_an_unknown_id_and_a_malformed_one_all_get_the_same_404(
    make_sidecar: SidecarFactory, database: Database, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(async_saga())
    saga_id, location = await trigger(sidecar, client, ALICE)
    await sidecar.finished(saga_id)

    answers = [
        await get(client, sidecar.url + location, BOB),
        await get(client, sidecar.url + location),  # no Authorization: another scope too
        await get(client, f"{sidecar.url}{STATUS_PATH}/{uuid.uuid4()}", ALICE),
        await get(client, f"{sidecar.url}{STATUS_PATH}/{saga_id.upper()}", ALICE),
        await get(client, f"{sidecar.url}{STATUS_PATH}/not-a-saga", ALICE),
        await get(client, f"{sidecar.url}{STATUS_PATH}/{saga_id}/steps", ALICE),
        await get(client, f"{sidecar.url}{STATUS_PATH}/", ALICE),
        await get(client, f"{sidecar.url}{STATUS_PATH}", ALICE),
    ]

    for status, headers, body in answers:
        assert status == 404
        assert headers["Content-Type"].startswith(PROBLEM)
        assert "Saga-Id" not in headers
        assert body == answers[0][2]
    assert (await get(client, sidecar.url + location, ALICE))[0] == 200
    assert "Bearer alice" not in await database.dump()  # the scope is stored as a keyed hash


async def test_without_scope_headers_the_id_alone_reads_the_status(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(async_saga(), idempotency={"scope_headers": []})
    saga_id, location = await trigger(sidecar, client, ALICE)
    await sidecar.finished(saga_id)

    status, _, body = await get(client, sidecar.url + location, BOB)

    assert status == 200 and body["saga_status"] == "completed"
    assert (await sidecar.runtime.store.get_instance(saga_id)).client_scope is None


async def test_prefer_wait_answers_as_soon_as_the_saga_ends(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    gate = gate_the_charge(services)
    sidecar = await make_sidecar(async_saga())
    _, location = await trigger(sidecar, client, ALICE)
    await services.wait_for_calls(2)

    status, headers, body, elapsed = await held_until(client, sidecar.url + location, gate)

    assert status == 200 and body["saga_status"] == "completed"
    assert headers["Preference-Applied"] == "wait=10"
    # The run that ended the saga woke the request: no poll interval, far from the 10 s.
    assert elapsed < POLL_INTERVAL / 2, elapsed
    assert sidecar.public[SAGAS].watch.waiting() == 0


async def test_prefer_wait_answers_after_n_seconds_when_the_saga_has_not_ended(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    gate = gate_the_charge(services)
    sidecar = await make_sidecar(async_saga())
    saga_id, location = await trigger(sidecar, client, ALICE)

    url = sidecar.url + location
    status, headers, body, elapsed = await timed_get(client, url, {**ALICE, "Prefer": "wait=2"})

    assert status == 200 and body["saga_status"] == "running" and body["response"] is None
    assert headers["Preference-Applied"] == "wait=2"
    assert 2.0 <= elapsed < 3.0, elapsed
    gate.set()
    await sidecar.finished(saga_id)
    # Ended already: answered at once, the wait capped at the documented maximum.
    _, headers, body, elapsed = await timed_get(client, url, {**ALICE, "Prefer": "wait=3600"})
    assert body["saga_status"] == "completed"
    assert headers["Preference-Applied"] == f"wait={MAX_WAIT}"
    assert elapsed < 1.0


async def test_another_tenant_waiting_gets_its_404_at_once(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    gate = gate_the_charge(services)
    sidecar = await make_sidecar(async_saga())
    _, location = await trigger(sidecar, client, ALICE)

    status, _, _, elapsed = await timed_get(
        client, sidecar.url + location, {**BOB, "Prefer": "wait=5"}
    )

    assert status == 404
    assert elapsed < 1.0
    gate.set()


async def test_a_saga_finished_by_another_replica_is_seen_within_the_poll_interval(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    gate = gate_the_charge(services)
    runs_it = await make_sidecar(async_saga())
    other = await make_sidecar(async_saga())  # same saga store, nothing runs there
    saga_id, location = await trigger(runs_it, client, ALICE)
    await services.wait_for_calls(2)

    status, _, body, elapsed = await held_until(client, other.url + location, gate)

    assert status == 200 and body["saga_status"] == "completed"
    assert body["response"]["body"]["charge"] == {"id": "pay-1"}
    assert elapsed < POLL_INTERVAL + 1.0, elapsed
    assert saga_id == body["saga_id"]


@pytest.mark.parametrize("middleware", ["on", "off"])
async def test_a_duplicate_async_trigger_is_a_replay_with_the_location(
    make_sidecar: SidecarFactory,
    database: Database,
    client: aiohttp.ClientSession,
    middleware: str,
) -> None:
    routes = OFF if middleware == "off" else []
    sidecar = await make_sidecar(async_saga(), idempotency={"routes": routes})
    key = {**ALICE, "Idempotency-Key": "order-A-1"}

    first = await sidecar.post(client, "/api/orders", ORDER, headers=key)
    await sidecar.finished(first[2]["saga_id"])
    second = await sidecar.post(client, "/api/orders", ORDER, headers=key)

    assert first[0] == second[0] == 202
    assert "Idempotent-Replayed" not in first[1]
    assert second[1]["Idempotent-Replayed"] == "true"
    assert second[1]["Location"] == first[1]["Location"] == f"{STATUS_PATH}/{first[2]['saga_id']}"
    assert second[1]["Saga-Id"] == first[1]["Saga-Id"]
    assert await database.count("saga_instances") == 1


async def test_nothing_under_the_status_path_reaches_the_app_or_the_idempotency_guard(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    # GET is covered and every path requires a key: the status URL is still served as itself.
    covered = {"methods": ["GET", "POST", "DELETE"], "require_key": True}
    sidecar = await make_sidecar(async_saga(), idempotency=covered)
    _, location = await trigger(sidecar, client, {**ALICE, "Idempotency-Key": "k-1"})
    keyed = {**ALICE, "Idempotency-Key": "status-1"}

    answers = []
    for method in ("GET", "GET", "POST", "POST", "DELETE", "PUT", "HEAD"):
        for path in (location, f"{STATUS_PATH}/x/../x", f"{STATUS_PATH}/"):
            async with client.request(method, sidecar.url + path, headers=keyed) as response:
                answers.append((method, path, response.status, dict(response.headers)))

    for method, path, status, headers in answers:
        expected = 200 if method in ("GET", "HEAD") and path == location else 404
        expected = 405 if method not in ("GET", "HEAD") else expected
        assert status == expected, (method, path, status)
        assert "Idempotent-Replayed" not in headers
        if status == 405:
            assert headers["Allow"] == "GET, HEAD"
    assert [c.line for c in services.calls if "_saga" in c.raw_path] == []


async def test_an_async_trigger_whose_scope_cannot_be_computed_starts_nothing(
    make_sidecar: SidecarFactory, database: Database, client: aiohttp.ClientSession
) -> None:
    down = {"store": "redis://127.0.0.1:1/0", "routes": OFF}
    sidecar = await make_sidecar(async_saga(), idempotency=down)

    status, headers, body = await sidecar.post(client, "/api/orders", ORDER, headers=ALICE)

    assert status == 503 and headers["Content-Type"].startswith(PROBLEM)
    assert "idempotency store" in body["detail"]
    assert await database.count("saga_instances") == 0


async def test_a_sync_trigger_whose_scope_cannot_be_computed_runs_unreadable_by_url(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    down = {"store": "redis://127.0.0.1:1/0", "routes": OFF}
    sidecar = await make_sidecar(idempotency=down)

    status, headers, _ = await sidecar.post(client, "/api/orders", ORDER, headers=ALICE)

    assert status == 201
    url = f"{sidecar.url}{STATUS_PATH}/{headers['Saga-Id']}"
    assert (await get(client, url, ALICE))[0] == 503  # scoping this read needs the store too
    saga = await sidecar.runtime.store.get_instance(headers["Saga-Id"])
    assert saga.client_scope == "-"


def write_config(tmp_path: Path, trigger_path: str, **sagas: Any) -> Path:
    """A config whose one saga is triggered on ``trigger_path``."""
    saga = async_saga(trigger={"method": "POST", "path": trigger_path})
    write_saga(tmp_path / "sagas", saga)
    config = {
        "upstream": {"url": "http://127.0.0.1:3000"},
        "services": dict.fromkeys(("inventory", "payments", "shipping"), "http://127.0.0.1:3001"),
        "sagas": {"store": "sqlite:///sagas.db", "definitions": ["sagas/*.yaml"], **sagas},
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("trigger_path", "sagas", "refused"),
    [
        ("/_saga/sagas", {}, True),
        ("/_saga/sagas/new", {}, True),
        ("/_saga/sagas/a/b", {}, True),
        ("/_saga/sagasx", {}, False),
        ("/status/orders/new", {"status_path": "/status/orders"}, True),
        ("/_saga/sagas/new", {"status_path": "/status/orders"}, False),
    ],
)
def test_check_refuses_a_trigger_under_the_status_path(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    trigger_path: str,
    sagas: dict[str, str],
    refused: bool,
) -> None:
    path = write_config(tmp_path, trigger_path, **sagas)

    code = main(["check", "--config", str(path)])

    errors = capsys.readouterr().err
    if refused:
        assert code == 2
        assert f"order.yaml:4: trigger.path: POST {trigger_path} is a reserved route" in errors
    else:
        assert code == 0, errors


@pytest.mark.parametrize("value", ["_saga", "/_saga/", "/a/../b", "/a/{id}", "/a/*", "/a?b", "/"])
def test_check_refuses_a_status_path_that_is_not_a_plain_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = write_config(tmp_path, "/api/orders", status_path=value)

    code = main(["check", "--config", str(path)])

    assert code == 2
    assert "sagas.status_path: expected an absolute path of plain segments" in (
        capsys.readouterr().err
    )


async def test_a_draining_sidecar_answers_a_held_status_request_at_once(
    sidecar_process: Callable[..., Sidecar],
    services: FakeServices,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    gate = gate_the_charge(services)
    write_saga(tmp_path / "sagas", async_saga())
    sidecar = sidecar_process(
        {
            "upstream": {"url": services.urls["inventory"]},
            "services": dict(services.urls),
            "sagas": {"store": f"sqlite:///{tmp_path / 'sagas.db'}"},
        }
    )
    async with client.post(sidecar.url + "/api/orders", json=ORDER, headers=ALICE) as response:
        location = response.headers["Location"]
    await services.wait_for_calls(2)
    waiting = asyncio.create_task(
        get(client, sidecar.url + location, {**ALICE, "Prefer": "wait=30"})
    )
    await asyncio.sleep(0.3)

    stopped = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    status, _, body = await waiting

    assert status == 200 and body["saga_status"] == "running"
    assert time.monotonic() - stopped < 2.0
    gate.set()


async def test_a_step_its_service_reported_failed_shows_that_report_as_its_answer(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    saga_id, token = await waiting_charge(sidecar, client)
    decline = {"code": "insufficient_funds", "message": "declined by the issuer"}
    status, _, _ = await call_back(
        client, sidecar, token, {"outcome": "failure", "result": decline}
    )
    assert status == 202
    await sidecar.finished(saga_id)

    status, _, body = await get(client, f"{sidecar.url}{STATUS_PATH}/{saga_id}")
    assert status == 200 and body["saga_status"] == "compensated"
    # The action's own answer (202, "pending") says nothing about why: the report does.
    assert body["response"]["step_answer"] == {"outcome": "failure", "result": decline}
