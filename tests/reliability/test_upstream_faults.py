"""Upstream faults against a real sidecar (``upstream.timeout: 1s``, step ``timeout: 1s``): each
gives its documented status, idempotency record and saga state.

==========================  ========================  ====================  ====================
fault                       covered request           its retry (same key)  saga step
==========================  ========================  ====================  ====================
reset mid-body              502 problem               409, not retained     unknown: compensated
body that never ends        200, streamed after 1 s   409, not retained     timeout: compensated
slow drip, ends within 1 s  200, whole body           replayed              succeeded
slow drip, longer than 1 s  200, streamed after 1 s   409, not retained     timeout: compensated
10 s stall                  504 problem after 1 s     504 replayed          timeout: compensated
closed port                 502 problem               executes again (502)  failed, not undone
==========================  ========================  ====================  ====================

Plain requests (no key) are covered by tests/foundation/test_upstream_failures.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import AppThread, Sidecar, find_free_port

from reliability.conftest import eventually
from reliability.services import FaultyUpstream

TIMEOUT = 1.0
FAULT_SAGA = {
    "name": "fault",
    "trigger": {"method": "POST", "path": "/saga"},
    "mode": "sync",
    "steps": [
        {
            "name": "call",
            "action": {"service": "faulty", "method": "POST", "path": "/{{ input.fault }}"},
            "compensation": {"service": "faulty", "method": "POST", "path": "/undo"},
            "retry": {"attempts": 2, "backoff": "10ms", "multiplier": 1, "max_backoff": "10ms"},
            "timeout": f"{TIMEOUT:g}s",
        }
    ],
    "response": {"status": 200, "body": {"status": "{{ steps.call.status }}"}},
}


@pytest.fixture(scope="module")
def faulty(background_loop: AppThread) -> Iterator[tuple[FaultyUpstream, str]]:
    server = FaultyUpstream()
    url = background_loop.run(server.start())
    yield server, url
    background_loop.run(server.close())


def sidecar_config(workdir: Path, upstream_url: str) -> dict[str, Any]:
    saga_file = workdir / "fault.yaml"
    saga_file.write_text(yaml.safe_dump(FAULT_SAGA), encoding="utf-8")
    return {
        "upstream": {"url": upstream_url, "timeout": f"{TIMEOUT:g}s"},
        "services": {"faulty": upstream_url},
        "idempotency": {"store": "memory://"},
        "sagas": {"store": f"sqlite:///{workdir / 'sagas.db'}", "definitions": [str(saga_file)]},
    }


@pytest.fixture(scope="module")
def sidecar(
    module_sidecar_process: Callable[..., Sidecar],
    tmp_path_factory: pytest.TempPathFactory,
    faulty: tuple[FaultyUpstream, str],
) -> Sidecar:
    """A sidecar in front of the faulty upstream."""
    return module_sidecar_process(sidecar_config(tmp_path_factory.mktemp("faults"), faulty[1]))


@pytest.fixture(scope="module")
def orphan(
    module_sidecar_process: Callable[..., Sidecar], tmp_path_factory: pytest.TempPathFactory
) -> Sidecar:
    """A sidecar whose upstream and saga service is a closed port."""
    closed = f"http://127.0.0.1:{find_free_port()}"
    return module_sidecar_process(sidecar_config(tmp_path_factory.mktemp("orphan"), closed))


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def covered(
    http: aiohttp.ClientSession, sidecar: Sidecar, path: str, key: str
) -> tuple[int, dict[str, str], bytes, float]:
    """A covered POST; its status, headers, body and how long it took."""
    started = time.monotonic()
    async with http.post(f"{sidecar.url}{path}", data=b"{}", headers={"Idempotency-Key": key}) as r:
        body = await r.read()
        return r.status, dict(r.headers), body, time.monotonic() - started


def problem(body: bytes, status: int) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    assert document["status"] == status
    return document


async def test_reset_mid_body_is_a_502_and_never_executes_again(
    http: aiohttp.ClientSession, sidecar: Sidecar, faulty: tuple[FaultyUpstream, str]
) -> None:
    key = uuid.uuid4().hex
    status, _, body, _ = await covered(http, sidecar, "/reset", key)
    assert status == 502 and "cut short" in problem(body, 502)["detail"]
    status, _, body, _ = await covered(http, sidecar, "/reset", key)
    assert status == 409 and "not retained" in problem(body, 409)["detail"]
    assert faulty[0].keys.count(("/reset", key)) == 1


async def test_endless_body_is_streamed_after_the_timeout_and_closed_when_the_client_leaves(
    http: aiohttp.ClientSession, sidecar: Sidecar, faulty: tuple[FaultyUpstream, str]
) -> None:
    key = uuid.uuid4().hex
    server = faulty[0]
    gone_before = server.peer_gone["/endless"]
    started = time.monotonic()
    async with http.post(
        f"{sidecar.url}/endless", data=b"{}", headers={"Idempotency-Key": key}
    ) as response:
        assert response.status == 200
        assert await response.content.readexactly(15) == b"chunk" * 3
        assert time.monotonic() - started < TIMEOUT + 2
    await eventually(
        lambda: server.peer_gone["/endless"] > gone_before, "the upstream connection closed"
    )
    status, _, body, _ = await covered(http, sidecar, "/endless", key)
    assert status == 409 and "not retained" in problem(body, 409)["detail"]
    assert server.keys.count(("/endless", key)) == 1


async def test_drip_ending_within_the_timeout_is_stored_and_replayed(
    http: aiohttp.ClientSession, sidecar: Sidecar, faulty: tuple[FaultyUpstream, str]
) -> None:
    key = uuid.uuid4().hex
    first = await covered(http, sidecar, "/drip-5", key)
    again = await covered(http, sidecar, "/drip-5", key)
    assert (first[0], first[2]) == (again[0], again[2]) == (200, b"ddddd")
    assert again[1].get("Idempotent-Replayed") == "true"
    assert faulty[0].keys.count(("/drip-5", key)) == 1


async def test_drip_outlasting_the_timeout_is_delivered_whole_but_not_retained(
    http: aiohttp.ClientSession, sidecar: Sidecar, faulty: tuple[FaultyUpstream, str]
) -> None:
    key = uuid.uuid4().hex
    status, _, body, elapsed = await covered(http, sidecar, "/drip-20", key)
    assert (status, body) == (200, b"d" * 20)
    assert elapsed > 1.9  # every gap was short: nothing cut it
    status, _, body, _ = await covered(http, sidecar, "/drip-20", key)
    assert status == 409 and "not retained" in problem(body, 409)["detail"]
    assert faulty[0].keys.count(("/drip-20", key)) == 1


async def test_stall_past_the_timeout_is_a_504_after_the_timeout_and_replayed(
    http: aiohttp.ClientSession, sidecar: Sidecar, faulty: tuple[FaultyUpstream, str]
) -> None:
    key = uuid.uuid4().hex
    status, _, body, elapsed = await covered(http, sidecar, "/stall", key)
    assert status == 504 and "may or may not" in problem(body, 504)["detail"]
    assert TIMEOUT * 0.9 < elapsed < TIMEOUT + 1.5
    status, headers, _, elapsed = await covered(http, sidecar, "/stall", key)
    assert (status, headers.get("Idempotent-Replayed")) == (504, "true")
    assert elapsed < 0.5
    assert faulty[0].keys.count(("/stall", key)) == 1


async def test_closed_port_is_a_502_and_the_key_stays_free(
    http: aiohttp.ClientSession, orphan: Sidecar
) -> None:
    key = uuid.uuid4().hex
    for _ in range(2):
        status, headers, body, _ = await covered(http, orphan, "/anything", key)
        assert status == 502 and "unreachable" in problem(body, 502)["detail"]
        assert "Idempotent-Replayed" not in headers


async def run_saga(http: aiohttp.ClientSession, sidecar: Sidecar, fault: str) -> dict[str, Any]:
    """Trigger the fault saga; the saga as the admin API shows it, with the trigger's status."""
    async with http.post(f"{sidecar.url}/saga", json={"fault": fault}) as response:
        status = response.status
        saga_id = response.headers["Saga-Id"]
    async with http.get(f"{sidecar.admin_url}/sagas/{saga_id}") as response:
        view: dict[str, Any] = await response.json()
    return {**view, "trigger_status": status}


@pytest.mark.parametrize(
    ("fault", "trigger_status", "step_status", "attempts"),
    [
        ("reset", 502, "compensated", 2),
        ("endless", 502, "compensated", 2),
        ("stall", 502, "compensated", 2),
        ("drip-20", 502, "compensated", 2),
        ("drip-5", 200, "succeeded", 1),
    ],
)
async def test_saga_step_fault_ends_in_its_documented_state(
    http: aiohttp.ClientSession,
    sidecar: Sidecar,
    faulty: tuple[FaultyUpstream, str],
    fault: str,
    trigger_status: int,
    step_status: str,
    attempts: int,
) -> None:
    undo_before = faulty[0].count("/undo")
    saga = await run_saga(http, sidecar, fault)
    assert saga["trigger_status"] == trigger_status
    assert saga["status"] == ("completed" if trigger_status == 200 else "compensated")
    step = saga["steps"][0]
    assert step["status"] == step_status
    keys = [k for p, k in faulty[0].keys if p == f"/{fault}" and k and k.startswith(saga["id"])]
    assert keys == [f"{saga['id']}:call:action"] * attempts
    assert faulty[0].count("/undo") - undo_before == (0 if step_status == "succeeded" else 1)


async def test_saga_step_on_a_closed_port_fails_without_compensation(
    http: aiohttp.ClientSession, orphan: Sidecar
) -> None:
    saga = await run_saga(http, orphan, "anything")
    assert saga["trigger_status"] == 502
    assert saga["status"] == "compensated"
    assert saga["steps"][0]["status"] == "failed"  # never sent: nothing to undo
