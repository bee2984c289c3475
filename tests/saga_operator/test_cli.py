"""``saga-sidecar sagas list|show|retry|abort`` as subprocesses, over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml

from saga_operator.conftest import Sidecar
from saga_operator.harness import (
    TERMINAL,
    Seeder,
    run_cli,
    stuck_order,
    wait_for_status,
    write_config,
)
from saga_operator.shop import Shop
from saga_runner.states import SagaStatus

MakeSidecar = Callable[..., Awaitable[Sidecar]]
ACTIONS = ("show", "retry", "abort")


async def start_order(client: aiohttp.ClientSession, sidecar: Sidecar, order_no: str) -> str:
    """Trigger the async ``order`` saga; return its id."""
    body = {"order_no": order_no, "card_number": "4111111111111111"}
    async with client.post(f"{sidecar.url}/api/orders", json=body) as response:
        assert response.status == 202, await response.text()
        saga_id: str = (await response.json())["saga_id"]
        return saga_id


@pytest.fixture
def config(tmp_path: Path, store_url: str, shop: Shop) -> str:
    """A config file over the test's store (no sidecar needs to run for list/show)."""
    return str(write_config(tmp_path, store_url, shop.url))


async def test_list_prints_a_table_newest_first_and_filters(seeder: Seeder, config: str) -> None:
    done = await seeder.saga(SagaStatus.COMPLETED, business_id="L-1")
    failed = await seeder.saga(SagaStatus.FAILED, business_id="L-2")
    refund = await seeder.saga(SagaStatus.FAILED, name="refund", business_id="L-3")

    everything, filtered, as_json = await asyncio.gather(
        run_cli("sagas", "list", "--config", config),
        run_cli("sagas", "list", "--status", "failed", "--name", "payment", "-c", config),
        run_cli("sagas", "list", "--business-id", "L-3", "--json", "-c", config),
    )
    assert everything.code == 0, everything.stderr
    header, *rows = everything.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "STATUS"]
    assert [row.split()[0] for row in rows] == [refund.id, failed.id, done.id]
    assert rows[1].split()[1:4] == ["payment", "failed", "L-2"]
    assert "seeded failed" in rows[1]
    assert [row.split()[0] for row in filtered.stdout.splitlines()[1:]] == [failed.id]
    assert as_json.code == 0
    assert [s["id"] for s in as_json.json()["items"]] == [refund.id]


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_list_pages_with_limit_and_before(seeder: Seeder, config: str) -> None:
    seeded = [await seeder.saga(SagaStatus.COMPLETED, business_id=f"P-{n}") for n in range(3)]
    first = await run_cli("sagas", "list", "--limit", "2", "-c", config)
    *rows, more = first.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [seeded[2].id, seeded[1].id]
    assert more.startswith("more: --before ")
    cursor = more.removeprefix("more: --before ")
    second = await run_cli(
        "sagas", "list", "--limit", "2", "--before", cursor, "--json", "-c", config
    )
    assert [s["id"] for s in second.json()["items"]] == [seeded[0].id]
    assert second.json()["next_cursor"] is None
    empty = await run_cli("sagas", "list", "--business-id", "nobody", "-c", config)
    assert (empty.code, empty.stdout.strip()) == (0, "no sagas match")


async def test_show_prints_the_step_timeline_with_attempts(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar()
    shop.declines = True
    saga_id = await start_order(client, sidecar, "S-1")
    await wait_for_status(client, sidecar.admin_url, saga_id, TERMINAL)

    text = await run_cli("sagas", "show", saga_id, "-c", sidecar.config_path)
    assert text.code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert f"saga:         {saga_id}" in lines
    assert "status:       compensated" in lines
    assert any(line.startswith("  #0 create_order  compensated") for line in lines)
    assert any(line.startswith("  #1 charge  failed") for line in lines)
    attempts = [line.split() for line in lines if line.startswith("      action #")]
    assert [(a[0], a[-1]) for a in attempts] == [("action", "201"), ("action", "402")]
    assert "4111111111111111" not in text.stdout

    data = (await run_cli("sagas", "show", saga_id, "--json", "-c", sidecar.config_path)).json()
    assert data["id"] == saga_id and data["status"] == "compensated"
    assert data["failed_step"] == "charge"
    assert "failed step:  charge" in lines
    assert [a["status_code"] for a in data["steps"][0]["attempts"]] == [201, 200]


async def test_retry_of_a_failed_saga_runs_its_compensation_and_exits_0(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar()
    shop.declines = shop.delete_fails = True
    saga_id = await start_order(client, sidecar, "R-1")
    saga = await wait_for_status(client, sidecar.admin_url, saga_id, TERMINAL)
    assert saga["status"] == "failed"
    shop.delete_fails = False

    result = await run_cli(
        "sagas", "retry", saga_id, "--actor", "bob", "--reason", "fixed", "-c", sidecar.config_path
    )
    assert result.code == 0, result.stderr
    assert f"retry by cli:bob: {saga_id} order compensating" in result.stdout
    assert f"ended: {saga_id} order compensated" in result.stdout
    assert shop.orders == {}

    saga = await wait_for_status(client, sidecar.admin_url, saga_id, {"compensated"})
    events = saga["events"]
    assert [e["action"] for e in events] == ["started", "retry", "retry_finished"]
    assert {e["actor"] for e in events[1:]} == {"cli:bob"}
    assert events[1]["detail"]["reason"] == "fixed"
    assert all(e["at"] for e in events)


async def test_abort_takes_a_running_saga_from_the_sidecar_and_compensates_it(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar()
    shop.blocks = True
    saga_id = await start_order(client, sidecar, "X-1")
    await shop.charge_started.wait()

    result = await run_cli(
        "sagas", "abort", saga_id, "--actor", "carol", "--json", "-c", sidecar.config_path
    )
    assert result.code == 0, result.stderr
    final = result.json()
    assert final["status"] == "compensated"
    assert final["failure_reason"] == "aborted by cli:carol"
    assert shop.refunded == [saga_id] and shop.orders == {}

    shop.release_charge.set()
    saga = await wait_for_status(client, sidecar.admin_url, saga_id, {"compensated"})
    assert [e["action"] for e in saga["events"]] == ["started", "abort", "abort_finished"]
    assert saga["events"][1]["actor"] == "cli:carol"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_refused_actions_exit_1(seeder: Seeder, config: str) -> None:
    done = await seeder.saga(SagaStatus.COMPLETED, business_id="N-1")
    retry, abort = await asyncio.gather(
        run_cli("sagas", "retry", done.id, "-c", config),
        run_cli("sagas", "abort", done.id, "-c", config),
    )
    assert retry.code == 1
    assert "refused: " in retry.stderr and "is completed" in retry.stderr
    assert abort.code == 1
    assert "only a running saga can be aborted" in abort.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_retry_that_fails_again_exits_1(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar()
    shop.declines = shop.delete_fails = True
    saga_id = await start_order(client, sidecar, "R-2")
    await wait_for_status(client, sidecar.admin_url, saga_id, TERMINAL)

    result = await run_cli("sagas", "retry", saga_id, "-c", sidecar.config_path)
    assert result.code == 1, result.stderr
    assert f"ended: {saga_id} order failed (compensation of step create_order" in result.stdout
    assert shop.calls.count(f"DELETE /orders/{next(iter(shop.orders))}") == 4


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_unknown_saga_exits_3(config: str) -> None:
    results = await asyncio.gather(
        *(run_cli("sagas", action, "no-such-saga", "-c", config) for action in ACTIONS)
    )
    for action, result in zip(ACTIONS, results, strict=True):
        assert result.code == 3, (action, result.stderr)
        assert "no saga no-such-saga" in result.stderr


BAD_INPUT = (
    ["list", "--limit", "0"],
    ["list", "--before", "garbage"],
    ["list", "--status", "lost"],
    ["list", "--limit", "many"],
    ["retry", "some-id", "--actor", " "],
    ["frobnicate"],
)


async def test_bad_input_exits_2_with_a_message(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, "sqlite:///sagas.db", "http://127.0.0.1:9"))
    results = await asyncio.gather(*(run_cli("sagas", *args, "-c", config) for args in BAD_INPUT))
    for args, result in zip(BAD_INPUT, results, strict=True):
        assert result.code == 2, (args, result)
        assert result.stderr, args


async def test_a_config_without_sagas_or_with_errors_exits_2(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"upstream": {"url": "http://127.0.0.1:9"}}))
    result = await run_cli("sagas", "list", "-c", str(plain))
    assert result.code == 2 and "no sagas section" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("upstream: {url: 'http://127.0.0.1:9'}\nlisten: nowhere\n")
    result = await run_cli("sagas", "list", "-c", str(broken))
    assert result.code == 2 and "broken.yaml:2" in result.stderr


async def test_an_unreachable_store_exits_1(tmp_path: Path, free_port: Callable[[], int]) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    config = write_config(tmp_path, url, "http://127.0.0.1:9")
    result = await run_cli("sagas", "list", "-c", str(config))
    assert result.code == 1
    assert "saga store error" in result.stderr


async def test_retry_resumes_a_running_saga_whose_replica_died(
    seeder: Seeder, config: str, shop: Shop, tmp_path: Path
) -> None:
    stuck = await stuck_order(seeder, tmp_path, "Z-1", lease_seconds=60)
    held = await stuck_order(seeder, tmp_path, "Z-2", lease_seconds=10 * 86400)

    result = await run_cli("sagas", "retry", stuck, "--json", "-c", config)
    assert result.code == 0, result.stderr
    assert result.json()["status"] == "completed"
    assert [body["order_no"] for body in shop.bodies if body and "order_no" in body] == ["Z-1"]

    refused = await run_cli("sagas", "retry", held, "-c", config)
    assert refused.code == 1
    assert "held by replica-gone" in refused.stderr and "force" in refused.stderr
    forced = await run_cli("sagas", "retry", held, "--force", "--actor", "dan", "-c", config)
    assert forced.code == 0, forced.stderr
    assert f"ended: {held} order completed" in forced.stdout
    events = (await seeder.store.get(held)).events
    assert [(e.actor, e.action) for e in events] == [
        ("replica-gone", "started"),
        ("cli:dan", "retry"),
        ("cli:dan", "retry_finished"),
    ]
    assert events[1].detail["force"] is True
    assert events[1].detail["previous_owner"] == "replica-gone"
    assert events[1].detail["previous_status"] == "running"
