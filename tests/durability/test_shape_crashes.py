"""``kill -9`` of a sidecar while a parallel group is in flight or while TCC confirms or cancels
run: another process finishes the saga, every effect happens once, and no step of a TCC saga is
both confirmed and cancelled.

The steps' service is an idempotent recording upstream (``Ledger(dedup=True)``): the first call
of each ``Idempotency-Key`` takes effect, a repeat gets the first answer, so ``effects(key)``
counts what really happened however often the resumed process re-sends a call whose outcome it
could not know.

Every test runs on both saga stores: on PostgreSQL the process that finishes is another replica;
on SQLite it is a new process started on the same database file, the way a SQLite sidecar is
restarted after a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from conftest import Upstream

from durability.conftest import (
    FAST_RETRY,
    STORES,
    Records,
    SagaCluster,
    eventually,
    kill,
    log_events,
    saga,
    step,
)
from durability.ledger import Ledger

MEMBERS = ("a", "b", "c")

pytestmark = pytest.mark.parametrize("store_kind", STORES)


@pytest.fixture
def effects(cluster: SagaCluster, app_in_thread: Callable[..., Upstream]) -> Iterator[Ledger]:
    """An idempotent recording service, named ``effects`` in the cluster's configs."""
    ledger = Ledger(dedup=True)
    upstream = app_in_thread(ledger.app())
    cluster.services["effects"] = upstream.url
    yield ledger
    upstream.stop()


def group_saga() -> dict[str, Any]:
    """``parallel: [a, b, c]``, then ``last``; each undone by ``POST /<name>/undo``."""
    members = [step(m, f"/{m}", undo=f"/{m}/undo", service="effects") for m in MEMBERS]
    return saga("grouped", [{"parallel": members}, step("last", "/last", service="effects")])


def tcc_step(name: str) -> dict[str, Any]:
    """A TCC step: ``POST /<name>/try``, ``/<name>/confirm``, ``/<name>/cancel``."""

    def call(verb: str) -> dict[str, Any]:
        return {"service": "effects", "method": "POST", "path": f"/{name}/{verb}"}

    return {
        "name": name,
        "try": call("try"),
        "confirm": {**call("confirm"), "retry": FAST_RETRY},
        "cancel": {**call("cancel"), "retry": FAST_RETRY},
        "retry": FAST_RETRY,
        "timeout": "10s",
    }


def tcc_saga() -> dict[str, Any]:
    """``debit``, then ``parallel: [credit, fee]`` (TCC)."""
    doc = saga("transfer", [tcc_step("debit"), {"parallel": [tcc_step("credit"), tcc_step("fee")]}])
    doc["kind"] = "tcc"
    return doc


def in_flight(ledger: Ledger, saga_id: str, paths: tuple[str, ...]) -> Callable[[], bool]:
    """Whether every path in ``paths`` has been called for the saga."""
    return lambda: all(ledger.calls_to(path, saga_id) for path in paths)


def verbs_of(ledger: Ledger, saga_id: str, name: str) -> list[str]:
    """The calls step ``name`` of a TCC saga got (``try``, ``confirm``, ``cancel``), in order."""
    return [c.path.split("/")[2] for c in ledger.of_saga(saga_id) if c.path.split("/")[1] == name]


async def crash_mid_call(
    cluster: SagaCluster,
    http: aiohttp.ClientSession,
    doc: dict[str, Any],
    reached: Callable[[str], Callable[[], bool]],
) -> str:
    """Run saga ``doc`` on one process, ``kill -9`` it once ``reached(saga_id)()`` holds, start
    another process; return the saga's id."""
    cluster.write_saga(doc)
    first = cluster.start()
    saga_id = await cluster.trigger(http, first, doc["name"], {"order": "O-1"})
    await eventually(reached(saga_id), "the calls to crash in reached the service")
    kill(first)
    cluster.start()
    return saga_id


async def test_killed_while_a_group_is_in_flight_another_process_finishes_it_each_effect_once(
    cluster: SagaCluster, effects: Ledger, records: Records, http: aiohttp.ClientSession
) -> None:
    effects.script("/b", delay=2.0)
    effects.script("/c", delay=2.0)
    members = tuple(f"/{m}" for m in MEMBERS)
    saga_id = await crash_mid_call(
        cluster, http, group_saga(), lambda saga: in_flight(effects, saga, members)
    )
    row = await records.wait_status(saga_id)

    assert row.status == "completed"
    for name in (*MEMBERS, "last"):
        assert effects.effects(f"{saga_id}:{name}:action") == 1, name
        assert effects.effects_on(f"/{name}", saga_id) == 1, name
    assert len(effects.calls_to("/b", saga_id)) == 2, "re-sent with its key after the crash"
    assert [s.status for s in await records.steps(saga_id)] == ["succeeded"] * 4
    assert not [c for c in effects.of_saga(saga_id) if c.path.endswith("/undo")]


async def test_killed_while_a_group_is_in_flight_a_peer_sharing_the_store_finishes_it_once(
    cluster: SagaCluster, effects: Ledger, records: Records, http: aiohttp.ClientSession
) -> None:
    effects.script("/b", delay=2.0)
    cluster.write_saga(group_saga())
    first, peer = cluster.start(), cluster.start()  # on SQLite: two processes, one file
    saga_id = await cluster.trigger(http, first, "grouped", {"order": "O-2"})
    await eventually(in_flight(effects, saga_id, ("/b",)), "b reached the service")
    kill(first)
    row = await records.wait_status(saga_id)

    assert row.status == "completed"
    for name in (*MEMBERS, "last"):
        assert effects.effects_on(f"/{name}", saga_id) == 1, name
    assert len(effects.calls_to("/b", saga_id)) == 2, "re-sent with its key after the crash"
    assert "resume" in [r.get("event") for r in log_events(peer, saga_id)]


async def test_killed_while_a_failed_groups_call_finishes_the_group_is_undone_once(
    cluster: SagaCluster, effects: Ledger, records: Records, http: aiohttp.ClientSession
) -> None:
    effects.script("/b", delay=2.0)
    effects.script("/c", status=409)
    members = tuple(f"/{m}" for m in MEMBERS)  # c refused at once, b mid-call
    saga_id = await crash_mid_call(
        cluster, http, group_saga(), lambda saga: in_flight(effects, saga, members)
    )
    row = await records.wait_status(saga_id)

    assert row.status == "compensated"
    for name in MEMBERS:
        assert effects.effects_on(f"/{name}", saga_id) == 1, name
        assert effects.effects_on(f"/{name}/undo", saga_id) == 1, name
    for name in ("a", "b"):
        assert effects.effects(f"{saga_id}:{name}:action") == 1, name
        assert effects.effects(f"{saga_id}:{name}:compensation") == 1, name
    # The group's outcomes are recorded together, so c's refusal died with the process: the
    # resumed run re-sent c, got the refusal replayed after an attempt of unknown outcome, and
    # compensated c too (an undo of nothing: answered, once).
    assert effects.effects(f"{saga_id}:c:action") == 1
    assert effects.effects(f"{saga_id}:c:compensation") == 1
    assert not effects.calls_to("/last", saga_id)
    statuses = {s.step_name: s.status for s in await records.steps(saga_id)}
    assert statuses == {
        "a": "compensated",
        "b": "compensated",
        "c": "compensated",
        "last": "pending",
    }


@pytest.mark.parametrize("delayed", ["confirm", "cancel"])
async def test_killed_while_tcc_confirms_or_cancels_run_another_process_ends_them_once(
    cluster: SagaCluster,
    effects: Ledger,
    records: Records,
    http: aiohttp.ClientSession,
    delayed: str,
) -> None:
    names = ("debit", "credit", "fee")
    for name in names:
        effects.script(f"/{name}/{delayed}", delay=2.0)
    if delayed == "cancel":
        effects.script("/fee/try", status=409)
    waiting = ("credit", "fee") if delayed == "cancel" else names
    paths = tuple(f"/{name}/{delayed}" for name in waiting)
    saga_id = await crash_mid_call(
        cluster, http, tcc_saga(), lambda saga: in_flight(effects, saga, paths)
    )
    row = await records.wait_status(saga_id)

    assert row.status == ("completed" if delayed == "confirm" else "compensated")
    for name in names:
        verbs = verbs_of(effects, saga_id, name)
        assert not ({"confirm", "cancel"} <= set(verbs)), f"{name} confirmed and cancelled: {verbs}"
        assert effects.effects(f"{saga_id}:{name}:try") == 1, name
        assert effects.effects(f"{saga_id}:{name}:{delayed}") == 1, name
        for verb in ("try", delayed):
            assert effects.effects_on(f"/{name}/{verb}", saga_id) == 1, f"{name} {verb}"
    steps = await records.steps(saga_id)
    assert {s.phase for s in steps} == {delayed}
    expected = "succeeded" if delayed == "confirm" else "compensated"
    assert [s.status for s in steps] == [expected] * 3
