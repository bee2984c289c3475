"""Hot reload of a real ``saga-sidecar serve`` process: SIGHUP, ``POST /reload`` and the file
watch re-read the saga files and the config; a bad file changes nothing and is counted; a saga
already running finishes on the version it started with; a listener change is named, not applied.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import aiohttp
import pytest
from conftest import Sidecar
from durability.conftest import Db, SagaCluster, eventually, metric, saga, step
from durability.ledger import Ledger

from hot_reload.conftest import events, next_event, rewrite_config


def v1() -> dict[str, object]:
    """``one`` then ``two`` at /v1/two."""
    return saga("pinned", [step("one", "/one"), step("two", "/v1/two")])


def v2() -> dict[str, object]:
    """``one`` at /v2/one (never held), ``two`` moved to /v2/two, and a new step ``three``."""
    return saga("pinned", [step("one", "/v2/one"), step("two", "/v2/two"), step("three", "/three")])


async def run_to_end(
    cluster: SagaCluster, sidecar: Sidecar, http: aiohttp.ClientSession, pg: Db, order: str
) -> tuple[str, dict[str, object]]:
    """Trigger ``pinned`` and wait for its end; its id and row."""
    saga_id = await cluster.trigger(http, sidecar, "pinned", {"order": order})
    return saga_id, await pg.wait_status(saga_id)


async def test_sighup_starts_the_next_saga_on_the_new_file_while_a_running_one_keeps_its_own(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    held = ledger.script("/one", gate=threading.Event()).gate
    assert held is not None
    cluster.write_saga(v1())
    sidecar = cluster.start()
    old_id = await cluster.trigger(http, sidecar, "pinned", {"order": "R-1"})
    await eventually(lambda: ledger.calls_to("/one", old_id), "the first saga is at step one")

    cluster.write_saga(v2())
    sidecar.signal(signal.SIGHUP)
    reloaded = await next_event(sidecar, "config_reloaded")
    new_id, new = await run_to_end(cluster, sidecar, http, pg, "R-2")
    held.set()
    old = await pg.wait_status(old_id)

    assert reloaded["reloaded"] is True and reloaded["applied"] == []
    assert reloaded["sagas"] == [f"pinned: new version {new['definition_hash'][:12]}"]
    assert new["status"] == old["status"] == "completed"
    assert [c.path for c in ledger.of_saga(new_id)] == ["/v2/one", "/v2/two", "/three"]
    assert [c.path for c in ledger.of_saga(old_id)] == ["/one", "/v1/two"]
    assert old["definition_hash"] != new["definition_hash"]
    assert metric(sidecar, "config_reload_failures_total") == 0
    assert metric(sidecar, "config_last_reload_successful") == 1


@pytest.mark.parametrize(
    ("breakage", "where", "message"),
    [
        ("saga", "pinned.yaml:3:", "while parsing"),
        ("step", "pinned.yaml:", "unknown service 'nowhere'"),
        ("config", ".yaml:", "idempotency.concurrent"),
    ],
    ids=["malformed-saga-yaml", "invalid-saga-step", "invalid-config"],
)
async def test_a_bad_file_keeps_the_old_definitions_logs_file_and_line_and_is_counted(
    cluster: SagaCluster,
    ledger: Ledger,
    pg: Db,
    http: aiohttp.ClientSession,
    breakage: str,
    where: str,
    message: str,
) -> None:
    saga_file = cluster.write_saga(v1())
    sidecar = cluster.start()
    if breakage == "saga":
        saga_file.write_text("name: pinned\ntrigger: {method: POST\nsteps: [\n", "utf-8")
    elif breakage == "step":
        broken = v2()
        broken["steps"][1]["action"]["service"] = "nowhere"  # type: ignore[index]
        cluster.write_saga(broken)
    else:
        cluster.write_saga(v2())
        rewrite_config(sidecar, idempotency={"concurrent": "block"})

    sidecar.signal(signal.SIGHUP)
    failed = await next_event(sidecar, "config_reload_failed")
    saga_id, row = await run_to_end(cluster, sidecar, http, pg, "B-1")

    errors = [r["msg"] for r in events(sidecar, "config_reload_error")]
    assert any(where in e and message in e for e in errors), errors
    assert failed["errors"] == errors
    assert row["status"] == "completed"
    assert [c.path for c in ledger.of_saga(saga_id)] == ["/one", "/v1/two"]
    assert metric(sidecar, "config_reload_failures_total") == 1
    assert metric(sidecar, "config_last_reload_successful") == 0
    assert events(sidecar, "config_reloaded") == []


async def test_post_reload_answers_what_changed_or_every_error(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    saga_file = cluster.write_saga(v1())
    sidecar = cluster.start(admin={"token": "t0k3n"})
    auth = {"Authorization": "Bearer t0k3n", "Content-Type": "application/json"}
    url = f"{sidecar.admin_url}/reload"

    async with http.post(url, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 401
    saga_file.write_text("name: pinned\nsteps: [\n", "utf-8")
    async with http.post(url, headers=auth) as response:
        refused = (response.status, response.headers["Content-Type"], await response.json())
    cluster.write_saga(v2())
    async with http.post(url, headers=auth) as response:
        done = (response.status, await response.json())
    saga_id, _ = await run_to_end(cluster, sidecar, http, pg, "P-1")

    status, content_type, problem = refused
    assert status == 422 and content_type.startswith("application/problem+json")
    assert problem["type"] == "urn:saga-sidecar:problem:reload-refused"
    assert any(str(saga_file) + ":" in error for error in problem["errors"])
    assert done[0] == 200 and done[1]["reloaded"] is True
    assert done[1]["sagas"][0].startswith("pinned: new version ")
    assert [c.path for c in ledger.of_saga(saga_id)] == ["/v2/one", "/v2/two", "/three"]
    assert metric(sidecar, "config_reload_failures_total") == 1
    assert metric(sidecar, "config_last_reload_successful") == 1


async def test_a_listener_change_is_named_and_kept_while_token_and_idempotency_change(
    cluster: SagaCluster, http: aiohttp.ClientSession, free_port: Callable[[], int]
) -> None:
    cluster.write_saga(v1())
    sidecar = cluster.start(admin={"token": "old-token"})
    moved = f"127.0.0.1:{free_port()}"
    async with http.post(f"{sidecar.url}/orders", json={}) as response:
        assert response.status == 200, "a POST without a key is forwarded"
    rewrite_config(
        sidecar, listen=moved, admin={"token": "new-token"}, idempotency={"require_key": True}
    )

    sidecar.signal(signal.SIGHUP)
    kept = await next_event(sidecar, "config_reload_restart_needed")
    reloaded = events(sidecar, "config_reloaded")[0]

    assert kept["not_reloaded"] == ["listen"]
    assert "listen" in kept["msg"] and "restart" in kept["msg"]
    assert reloaded["applied"] == ["admin.token", "idempotency.require_key"]
    async with http.post(f"{sidecar.url}/orders", json={}) as response:
        assert response.status == 400, "idempotency.require_key is in effect"
    async with http.get(f"{sidecar.url}/still-here") as response:
        assert response.status == 200, "the old listener still serves"
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"http://{moved}/"):
            pass
    for token, status in (("old-token", 401), ("new-token", 200)):
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{sidecar.admin_url}/sagas", headers=headers) as response:
            assert response.status == status, token


async def test_the_file_watch_picks_a_change_up_without_a_signal(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    cluster.write_saga(v1())
    sidecar = cluster.start(reload={"watch": True, "interval": "100ms"})
    cluster.write_saga(v2())

    reloaded = await next_event(sidecar, "config_reloaded")
    saga_id, _ = await run_to_end(cluster, sidecar, http, pg, "W-1")

    assert "(watch)" in reloaded["msg"]
    assert [c.path for c in ledger.of_saga(saga_id)] == ["/v2/one", "/v2/two", "/three"]
    cluster.write_saga({"name": "extra"})  # a new file in the glob, and an invalid one
    failed = await next_event(sidecar, "config_reload_failed")
    assert any("extra.yaml:" in e for e in failed["errors"]), "a new file in the glob is seen"
