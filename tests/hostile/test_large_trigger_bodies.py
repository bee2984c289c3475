"""Large saga trigger bodies: bounded by ``sagas.max_input``, and never a stall for everyone.

Parsing, checking and redacting a trigger body of several MiB used to run on the event loop: every
other request of the process waited seconds behind it. The sidecar process here allows bodies of
up to ``MAX_INPUT``; a body just under it must leave an unrelated GET answered promptly while it
is processed, and one just over it gets 413 with no saga row.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import Sidecar
from saga_store.helpers import Target

from hostile.services import Recorder
from proxy.admin.dashboard_html import MAX_SHOWN, json_block
from proxy.config import SagasConfig

MAX_INPUT = 8 * 1024**2
# How long an unrelated GET may wait while a large body is processed (it waited over 1 s before).
GET_LATENCY_BOUND = 0.75
BIG_SAGA = {
    "name": "big",
    "trigger": {"method": "POST", "path": "/hostile/big"},
    "mode": "sync",
    "steps": [
        {
            "name": "a",
            "action": {
                "service": "echo",
                "method": "POST",
                "path": "/small",
                "body": {"order": "{{ input.order }}"},
            },
            "retry": {"attempts": 1},
        }
    ],
    "response": {"status": 200, "body": {"order": "{{ input.order }}"}},
}


def body_of_size(size: int) -> bytes:
    """A trigger body of about ``size`` bytes made of many small objects (the costly shape)."""
    item = {"sku": "sku-000000", "qty": 1, "password": "hunter2"}
    count = (size - 64) // (len(json.dumps(item)) + 2)
    body = json.dumps({"order": "o-1", "items": [item] * count}).encode()
    assert len(body) <= size
    return body


@pytest.fixture(scope="module")
def big_sidecar(
    module_sidecar_process: Callable[..., Sidecar],
    tmp_path_factory: pytest.TempPathFactory,
    recorder: tuple[Recorder, str],
    pg: Target,
) -> Sidecar:
    """A sidecar whose trigger bodies may be up to ``MAX_INPUT`` bytes."""
    saga_dir = tmp_path_factory.mktemp("big-sagas")
    (saga_dir / "big.yaml").write_text(yaml.safe_dump(BIG_SAGA), encoding="utf-8")
    return module_sidecar_process(
        {
            "upstream": {"url": recorder[1]},
            "services": {"echo": recorder[1]},
            "idempotency": {"store": "memory://"},
            "sagas": {
                "store": pg.url,
                "definitions": [str(Path(saga_dir) / "*.yaml")],
                "max_input": MAX_INPUT,
            },
        }
    )


async def timed_get(http: aiohttp.ClientSession, url: str) -> float:
    """Seconds an unrelated GET took."""
    started = time.perf_counter()
    async with http.get(url) as response:
        await response.read()
        assert response.status == 200
    return time.perf_counter() - started


async def test_a_large_allowed_body_does_not_stall_an_unrelated_get(
    big_sidecar: Sidecar, pg: Target
) -> None:
    body = body_of_size(MAX_INPUT - 1024)
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        await timed_get(http, f"{big_sidecar.url}/warm-up")
        started = time.perf_counter()
        url = f"{big_sidecar.url}/hostile/big"
        trigger = asyncio.create_task(http.post(url, data=io.BytesIO(body)))
        while not trigger.done():
            latencies.append(await timed_get(http, f"{big_sidecar.url}/unrelated"))
            await asyncio.sleep(0.02)
        async with await trigger as response:
            answer: Any = await response.json()
            assert response.status == 200, answer
            saga_id = response.headers["Saga-Id"]
        elapsed = time.perf_counter() - started
        async with http.get(f"{big_sidecar.admin_url}/dashboard/sagas/{saga_id}") as page:
            html = await page.text()
            assert page.status == 200
        async with http.get(f"{big_sidecar.admin_url}/sagas/{saga_id}") as whole:
            view = await whole.json()
    print(
        f"\n{len(body)} byte trigger: {elapsed:.2f} s; {len(latencies)} GETs meanwhile, "
        f"slowest {max(latencies):.3f} s; peak RSS {big_sidecar.peak_rss_bytes() / 1e6:.0f} MB"
    )
    assert answer == {"order": "o-1"}
    assert max(latencies) < GET_LATENCY_BOUND
    # The dashboard shows each value up to 64 KiB, with a marker; the admin API has it whole.
    assert len(html) < 512 * 1024 and "[cut: longer than 64 KiB" in html
    assert len(view["input"]["items"]) == len(json.loads(body)["items"])
    assert view["input"]["items"][0]["password"] == "[REDACTED]"


@pytest.mark.parametrize("how", ["content-length", "chunked", "keyed"])
async def test_a_body_over_max_input_gets_413_and_starts_nothing(
    big_sidecar: Sidecar, pg: Target, how: str
) -> None:
    before = await pg.count("saga_instances")
    body = body_of_size(MAX_INPUT + 4096)
    body = body + b" " * (MAX_INPUT + 1 - len(body))

    async def pieces() -> Any:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    data: Any = pieces() if how == "chunked" else io.BytesIO(body)
    # With a key, the idempotency layer reads the body first; the trigger still refuses it.
    headers = {"Idempotency-Key": f"big-{time.time_ns()}"} if how == "keyed" else {}
    url = f"{big_sidecar.url}/hostile/big"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=data, headers=headers) as response,
    ):
        assert response.status == 413, await response.text()
        assert response.content_type == "application/problem+json"
    assert await pg.count("saga_instances") == before


def test_the_dashboard_shows_a_value_up_to_64_kib_with_a_marker() -> None:
    small = {"items": ["x" * 100] * 10}
    assert "[cut:" not in json_block(small)
    block = json_block({"items": ["x" * 100] * 100_000})
    assert MAX_SHOWN < len(block) < 2 * MAX_SHOWN  # (escaped quotes grow it)
    assert "[cut: longer than 64 KiB" in block


def test_trigger_bodies_are_bounded_to_256_kib_by_default() -> None:
    assert SagasConfig().max_input == 256 * 1024
