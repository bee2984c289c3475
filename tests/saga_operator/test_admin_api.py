"""The saga admin API (docs/OPERATIONS.md) of an in-process sidecar, over SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Upstream

from proxy.app import build_apps
from proxy.config import load_config
from proxy.keys import PUBLIC_APP
from saga_operator.conftest import Sidecar
from saga_operator.harness import (
    TERMINAL,
    TOKEN,
    Seeder,
    auth,
    get_json,
    stuck_order,
    wait_for_status,
    write_config,
)
from saga_operator.shop import Shop
from saga_runner.states import SagaStatus

MakeSidecar = Callable[..., Awaitable[Sidecar]]


async def start_order(client: aiohttp.ClientSession, sidecar: Sidecar, order_no: str) -> str:
    """Trigger the async ``order`` saga; return its id."""
    body = {"order_no": order_no, "card_number": "4111111111111111"}
    async with client.post(f"{sidecar.url}/api/orders", json=body) as response:
        assert response.status == 202, await response.text()
        saga_id: str = (await response.json())["saga_id"]
        return saga_id


async def post(
    client: aiohttp.ClientSession, url: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """POST ``body`` as JSON (``{}`` when none) and return status, decoded body and the response."""
    async with client.post(url, json={} if body is None else body, headers=auth(token)) as response:
        return response.status, await response.json(content_type=None), response


async def failed_order(client: aiohttp.ClientSession, sidecar: Sidecar, shop: Shop) -> str:
    """An ``order`` saga that ended ``failed``: charge declined, then the order delete failed."""
    shop.declines = True
    shop.delete_fails = True
    saga_id = await start_order(client, sidecar, "A-1")
    saga = await wait_for_status(client, sidecar.admin_url, saga_id, TERMINAL, TOKEN)
    assert saga["status"] == "failed", saga
    return saga_id


async def test_list_is_newest_first_and_filters_by_status_name_and_business_id(
    make_sidecar: MakeSidecar, seeder: Seeder, client: aiohttp.ClientSession
) -> None:
    done = await seeder.saga(SagaStatus.COMPLETED, business_id="B-1")
    failed = await seeder.saga(SagaStatus.FAILED, business_id="B-2")
    refund = await seeder.saga(SagaStatus.COMPLETED, name="refund", business_id="B-2")
    running = await seeder.saga(SagaStatus.RUNNING, business_id="B-3")
    sidecar = await make_sidecar(token=TOKEN)
    sagas = f"{sidecar.admin_url}/sagas"

    status, body = await get_json(client, sagas, TOKEN)
    assert status == 200
    assert [s["id"] for s in body["items"]] == [running.id, refund.id, failed.id, done.id]
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert first["status"] == "running" and first["name"] == "payment"
    assert first["business_id"] == "B-3"
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None

    _, body = await get_json(client, f"{sagas}?status=completed", TOKEN)
    assert [s["id"] for s in body["items"]] == [refund.id, done.id]
    _, body = await get_json(client, f"{sagas}?name=payment&status=completed", TOKEN)
    assert [s["id"] for s in body["items"]] == [done.id]
    _, body = await get_json(client, f"{sagas}?business_id=B-2", TOKEN)
    assert [s["id"] for s in body["items"]] == [refund.id, failed.id]
    _, body = await get_json(client, f"{sagas}?status=&name=&business_id=", TOKEN)
    assert len(body["items"]) == 4
    _, body = await get_json(client, f"{sagas}?business_id=nobody", TOKEN)
    assert body["items"] == []


async def test_list_pages_with_limit_and_before_cursor(
    make_sidecar: MakeSidecar, seeder: Seeder, client: aiohttp.ClientSession
) -> None:
    seeded = [await seeder.saga(SagaStatus.COMPLETED, business_id=f"P-{n}") for n in range(5)]
    newest_first = [s.id for s in reversed(seeded)]
    sidecar = await make_sidecar(token=TOKEN)

    seen: list[str] = []
    url = f"{sidecar.admin_url}/sagas?limit=2&status=completed"
    pages = 0
    while True:
        status, body = await get_json(client, url, TOKEN)
        assert status == 200
        pages += 1
        seen += [s["id"] for s in body["items"]]
        if body["next_cursor"] is None:
            assert "next" not in body
            break
        assert len(body["items"]) == 2
        assert "status=completed" in body["next"] and "limit=2" in body["next"]
        url = f"{sidecar.admin_url}{body['next']}"
    assert seen == newest_first
    assert pages == 3


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("status=lost", "unknown status 'lost'"),
        ("limit=0", "limit must be between 1 and 1000"),
        ("limit=ten", "limit must be a whole number"),
        ("before=not-a-cursor", "invalid cursor"),
        ("stauts=failed", "unknown query parameter 'stauts'"),
        ("status=failed&status=running", "given more than once"),
    ],
)
async def test_list_rejects_bad_filters_with_400_problem(
    make_sidecar: MakeSidecar, client: aiohttp.ClientSession, query: str, complaint: str
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    async with client.get(f"{sidecar.admin_url}/sagas?{query}", headers=auth()) as response:
        assert response.status == 400
        assert response.content_type == "application/problem+json"
        problem = await response.json(content_type=None)
    assert problem["status"] == 400
    assert complaint in problem["detail"]


async def test_show_has_each_step_with_attempt_status_codes_errors_and_durations(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    saga_id = await failed_order(client, sidecar, shop)

    status, saga = await get_json(client, f"{sidecar.admin_url}/sagas/{saga_id}", TOKEN)
    assert status == 200
    assert saga["id"] == saga_id and saga["name"] == "order" and saga["business_id"] == "A-1"
    assert saga["input"] == {"order_no": "A-1", "card_number": "[REDACTED]"}
    assert "compensation of step create_order failed" in saga["failure_reason"]
    assert (saga["failed_step"], saga["failed_step_order"]) == ("charge", 1)
    status, page = await get_json(client, f"{sidecar.admin_url}/sagas", TOKEN)
    assert [(s["failed_step"], s["failed_step_order"]) for s in page["items"]] == [("charge", 1)]
    create, charge = saga["steps"]
    assert (create["name"], create["status"]) == ("create_order", "compensation_failed")
    assert (charge["name"], charge["status"]) == ("charge", "failed")
    calls = [(a["kind"], a["attempt"], a["status_code"]) for a in create["attempts"]]
    assert calls == [("action", 1, 201), ("compensation", 1, 500), ("compensation", 2, 500)]
    assert [(a["kind"], a["status_code"]) for a in charge["attempts"]] == [("action", 402)]
    assert "402" in charge["error"]
    for attempt in create["attempts"] + charge["attempts"]:
        assert isinstance(attempt["duration_ms"], float) and attempt["duration_ms"] >= 0
        assert datetime.fromisoformat(attempt["started_at"]).tzinfo is not None
        assert "error" in attempt
    assert charge["execute_data"]["body"]["card_number"] == "[REDACTED]"
    assert [e["action"] for e in saga["events"]] == ["started"]


async def test_show_and_actions_on_an_unknown_saga_are_404_problems(
    make_sidecar: MakeSidecar, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    status, problem = await get_json(client, f"{sidecar.admin_url}/sagas/no-such-saga", TOKEN)
    assert status == 404 and problem["status"] == 404
    assert "no-such-saga" in problem["detail"]
    for action in ("retry", "abort"):
        status, problem, response = await post(
            client, f"{sidecar.admin_url}/sagas/no-such-saga/{action}"
        )
        assert status == 404, problem
        assert response.content_type == "application/problem+json"


async def test_retry_of_a_failed_saga_after_the_upstream_is_fixed_ends_compensated(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    saga_id = await failed_order(client, sidecar, shop)
    order_id = next(iter(shop.orders))
    shop.delete_fails = False

    body = {"actor": "alice", "reason": "orders database is back"}
    status, saga, response = await post(client, f"{sidecar.admin_url}/sagas/{saga_id}/retry", body)
    assert status == 202, saga
    assert response.headers["Location"] == f"/sagas/{saga_id}"
    assert saga["id"] == saga_id and saga["status"] == "compensating"

    saga = await wait_for_status(
        client, sidecar.admin_url, saga_id, {"compensated"}, TOKEN, event="retry_finished"
    )
    assert saga["steps"][0]["status"] == "compensated"
    assert order_id not in shop.orders
    assert shop.calls.count(f"DELETE /orders/{order_id}") == 3
    events = {e["action"]: e for e in saga["events"]}
    assert list(events) == ["started", "retry", "retry_finished"]
    retry = events["retry"]
    assert retry["actor"] == "admin-api:alice"
    assert datetime.fromisoformat(retry["at"]).tzinfo is not None
    assert retry["detail"]["previous_status"] == "failed"
    assert retry["detail"]["reason"] == "orders database is back"
    assert events["retry_finished"]["actor"] == "admin-api:alice"
    assert events["retry_finished"]["detail"] == {"status": "compensated"}


async def test_abort_of_a_running_saga_compensates_its_steps_now(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    shop.blocks = True
    saga_id = await start_order(client, sidecar, "A-2")
    await shop.charge_started.wait()

    status, saga, _ = await post(client, f"{sidecar.admin_url}/sagas/{saga_id}/abort")
    assert status == 202, saga
    assert saga["status"] == "compensating"
    assert saga["failure_reason"].startswith("aborted by admin-api:127.0.0.1")

    saga = await wait_for_status(
        client, sidecar.admin_url, saga_id, {"compensated"}, TOKEN, event="abort_finished"
    )
    assert [s["status"] for s in saga["steps"]] == ["compensated", "compensated"]
    assert shop.refunded == [saga_id]
    assert shop.orders == {}
    assert [e["action"] for e in saga["events"]] == ["started", "abort", "abort_finished"]
    abort = saga["events"][1]
    assert abort["actor"] == "admin-api:127.0.0.1"
    assert abort["detail"]["previous_status"] == "running"
    assert abort["detail"]["force"] is True

    shop.release_charge.set()  # the replica that ran the charge is fenced off by now
    saga = await wait_for_status(client, sidecar.admin_url, saga_id, {"compensated"}, TOKEN)
    assert saga["status"] == "compensated"


async def test_actions_the_status_does_not_allow_are_409_and_change_nothing(
    make_sidecar: MakeSidecar, seeder: Seeder, client: aiohttp.ClientSession
) -> None:
    done = await seeder.saga(SagaStatus.COMPLETED, business_id="C-1")
    failed = await seeder.saga(SagaStatus.FAILED, business_id="C-2")
    running = await seeder.saga(SagaStatus.RUNNING, business_id="C-3")
    sidecar = await make_sidecar(token=TOKEN)
    admin = sidecar.admin_url
    before = {
        s.id: (await get_json(client, f"{admin}/sagas/{s.id}", TOKEN))[1]
        for s in (done, failed, running)
    }

    cases = [
        (done.id, "retry", "is completed"),
        (done.id, "abort", "is completed"),
        (failed.id, "abort", "only a running saga can be aborted"),
        (running.id, "retry", "held by replica-seed"),
    ]
    for saga_id, action, complaint in cases:
        status, problem, response = await post(client, f"{admin}/sagas/{saga_id}/{action}")
        assert status == 409, (action, problem)
        assert response.content_type == "application/problem+json"
        assert complaint in problem["detail"]
        assert problem["saga_id"] == saga_id
    status, problem, _ = await post(client, f"{admin}/sagas/{running.id}/retry", {"force": True})
    assert status == 409 and "cannot be run" in problem["detail"]

    for saga_id, earlier in before.items():
        _, now = await get_json(client, f"{admin}/sagas/{saga_id}", TOKEN)
        assert now == earlier


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ([1, 2], "must be a JSON object"),
        ({"actor": "alice", "verbose": True}, "unknown field 'verbose'"),
        ({"actor": 7}, "actor must be a string"),
        ({"actor": "bad\nname"}, "actor must be 1 to 100 printable characters"),
        ({"force": "yes"}, "force must be a boolean"),
    ],
)
async def test_bad_action_bodies_are_400(
    make_sidecar: MakeSidecar,
    seeder: Seeder,
    client: aiohttp.ClientSession,
    body: Any,
    complaint: str,
) -> None:
    failed = await seeder.saga(SagaStatus.FAILED, business_id="D-1")
    sidecar = await make_sidecar(token=TOKEN)
    status, problem, _ = await post(client, f"{sidecar.admin_url}/sagas/{failed.id}/retry", body)
    assert status == 400, problem
    assert complaint in problem["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sagas"),
        ("GET", "/sagas/{id}"),
        ("POST", "/sagas/{id}/retry"),
        ("POST", "/sagas/{id}/abort"),
        ("GET", "/dashboard"),
        ("GET", "/dashboard/sagas/{id}"),
    ],
)
async def test_saga_routes_need_the_admin_token(
    make_sidecar: MakeSidecar,
    seeder: Seeder,
    client: aiohttp.ClientSession,
    method: str,
    path: str,
) -> None:
    done = await seeder.saga(SagaStatus.COMPLETED, business_id="E-1")
    sidecar = await make_sidecar(token=TOKEN)
    url = sidecar.admin_url + path.format(id=done.id)
    for headers in ({}, auth("wrong-token"), {"Authorization": TOKEN}):
        async with client.request(method, url, headers=headers) as response:
            assert response.status == 401, headers
            assert response.content_type == "application/problem+json"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    json_body = {} if method == "POST" else None
    async with client.request(method, url, headers=auth(), json=json_body) as response:
        # With the token: served (a completed saga cannot be retried or aborted: 409).
        assert response.status == (200 if method == "GET" else 409)


async def test_output_redacts_secrets_even_when_stored_unredacted(
    make_sidecar: MakeSidecar, seeder: Seeder, client: aiohttp.ClientSession
) -> None:
    secret_input = {
        "order_no": "F-1",
        "card": {"card_number": "4111111111111111", "cvv": "123"},
        "password": "hunter2",
        "items": [{"password": "x"}],
    }
    saga = await seeder.saga(SagaStatus.RUNNING, business_id="F-1", input_data=secret_input)
    await seeder.store.record_event(
        saga.id,
        "replica-seed",
        "started",
        {"headers": {"authorization": "Bearer abc", "cookie": "sid=1", "x-api-key": "k"}},
    )
    sidecar = await make_sidecar(token=TOKEN)
    async with client.get(f"{sidecar.admin_url}/sagas/{saga.id}", headers=auth()) as response:
        text = await response.text()
        body = await response.json()
    for secret in ("4111111111111111", "hunter2", "Bearer abc", "sid=1", '"k"', '"123"'):
        assert secret not in text
    assert body["input"]["card"] == {"card_number": "[REDACTED]", "cvv": "[REDACTED]"}
    assert body["input"]["items"] == [{"password": "[REDACTED]"}]
    headers = body["events"][0]["detail"]["headers"]
    assert headers == {
        "authorization": "[REDACTED]",
        "cookie": "[REDACTED]",
        "x-api-key": "[REDACTED]",
    }


async def test_forced_retry_takes_a_running_saga_from_a_live_replica_and_finishes_it(
    make_sidecar: MakeSidecar,
    seeder: Seeder,
    shop: Shop,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    held = await stuck_order(seeder, tmp_path, "G-1", lease_seconds=10 * 86400)
    url = f"{sidecar.admin_url}/sagas/{held}/retry"

    status, problem, _ = await post(client, url)
    assert status == 409 and "held by replica-gone" in problem["detail"]
    status, saga, _ = await post(client, url, {"force": True, "actor": "erin"})
    assert status == 202, saga
    assert saga["status"] == "running"
    saga = await wait_for_status(
        client, sidecar.admin_url, held, {"completed"}, TOKEN, event="retry_finished"
    )
    assert [s["status"] for s in saga["steps"]] == ["succeeded", "succeeded"]
    retry = saga["events"][1]
    assert (retry["actor"], retry["action"]) == ("admin-api:erin", "retry")
    assert retry["detail"]["previous_owner"] == "replica-gone"
    assert retry["detail"]["force"] is True


async def test_actions_answer_503_and_change_nothing_without_a_scheduler_to_run_them(
    store_url: str,
    shop: Shop,
    seeder: Seeder,
    tmp_path: Path,
    upstream_server: Callable[..., Awaitable[Upstream]],
    client: aiohttp.ClientSession,
) -> None:
    failed = await seeder.saga(SagaStatus.FAILED, business_id="H-1")
    apps = build_apps(load_config(write_config(tmp_path, store_url, shop.url)))
    del apps.admin[PUBLIC_APP]  # as if the public listener (and its scheduler) were gone
    await upstream_server(apps.public)
    admin = (await upstream_server(apps.admin)).url
    _, before = await get_json(client, f"{admin}/sagas/{failed.id}")

    status, problem, _ = await post(client, f"{admin}/sagas/{failed.id}/retry", token=None)
    assert status == 503, problem
    assert "no task scheduler" in problem["detail"]
    _, after = await get_json(client, f"{admin}/sagas/{failed.id}")
    assert after == before
