"""Parallel groups and TCC sagas through the admin API and ``sagas show``: their stages (a group's
members side by side) and TCC phases, and ``retry``/``abort`` on both shapes, against a real
upstream (``Shop``) on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from saga_operator.conftest import Sidecar
from saga_operator.harness import TERMINAL, TOKEN, get_json, run_cli, wait_for_status
from saga_operator.shapes import GROUP, start
from saga_operator.shop import Shop

MakeSidecar = Callable[..., Awaitable[Sidecar]]


async def post(client: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """POST ``{}`` with the admin token; return the status and the decoded body."""
    async with client.post(url, json={}, headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
        return answer.status, await answer.json(content_type=None)


def calls(saga: dict[str, Any]) -> dict[str, list[tuple[str, int | None]]]:
    """Each step's calls as ``(kind, status code)``, oldest first."""
    return {
        s["name"]: [(a["kind"], a["status_code"]) for a in s["attempts"]] for s in saga["steps"]
    }


async def test_show_lists_a_groups_members_side_by_side_by_stage(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    shop.refuses.add("POST /shape/fraud")
    saga_id = await start(client, sidecar, "checkout")
    saga = await wait_for_status(client, sidecar.admin_url, saga_id, TERMINAL, TOKEN)

    assert saga["status"] == "compensated"
    assert (saga["kind"], saga["phase"]) == ("saga", None)
    assert saga["stages"] == [
        {"stage": 0, "parallel": True, "steps": list(GROUP)},
        {"stage": 1, "parallel": False, "steps": ["charge"]},
    ]
    assert [(s["name"], s["stage"], s["status"]) for s in saga["steps"]] == [
        ("reserve", 0, "compensated"),
        ("coupon", 0, "compensated"),
        ("fraud", 0, "failed"),
        ("charge", 1, "pending"),
    ]
    assert all(s["phases"] is None for s in saga["steps"])

    shown = await run_cli("sagas", "show", saga_id, "--config", sidecar.config_path)
    assert shown.code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "kind:         saga" in lines
    assert "  0  reserve compensated | coupon compensated | fraud failed  (parallel)" in lines
    assert "  1  charge pending" in lines
    assert "  #2 fraud  failed  (action attempts 1/1)  stage 0" in lines


async def test_show_has_a_tcc_sagas_phase_and_each_steps_try_confirm_and_cancel(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    confirmed = await start(client, sidecar, "transfer")
    confirmed_saga = await wait_for_status(client, sidecar.admin_url, confirmed, TERMINAL, TOKEN)
    shop.refuses.add("POST /shape/credit")
    cancelled = await start(client, sidecar, "transfer")
    cancelled_saga = await wait_for_status(client, sidecar.admin_url, cancelled, TERMINAL, TOKEN)

    assert (confirmed_saga["status"], confirmed_saga["kind"]) == ("completed", "tcc")
    assert confirmed_saga["phase"] == "confirm"
    debit = confirmed_saga["steps"][0]
    assert (debit["phase"], debit["status"]) == ("confirm", "succeeded")
    assert debit["phases"] == {
        "try": {"status": "succeeded", "calls": 1, "last_status_code": 201, "last_error": None},
        "confirm": {"status": "succeeded", "calls": 1, "last_status_code": 201, "last_error": None},
        "cancel": {"status": None, "calls": 0, "last_status_code": None, "last_error": None},
    }
    assert (cancelled_saga["status"], cancelled_saga["phase"]) == ("compensated", "cancel")
    assert calls(cancelled_saga) == {
        "debit": [("try", 201), ("cancel", 200)],
        "credit": [("try", 409), ("cancel", 200)],
        "fee": [("try", 201), ("cancel", 200)],
    }
    assert cancelled_saga["stages"][1] == {"stage": 1, "parallel": True, "steps": ["credit", "fee"]}
    credit = cancelled_saga["steps"][1]["phases"]
    assert credit["try"] == {
        "status": None,
        "calls": 1,
        "last_status_code": 409,
        "last_error": None,
    }
    assert credit["cancel"]["status"] == "compensated"

    shown = await run_cli("sagas", "show", cancelled, "--config", sidecar.config_path)
    assert shown.code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line for line in lines if line.startswith(("kind:", "phase:"))] == [
        "kind:         tcc",
        "phase:        cancel",
    ]
    assert (
        "      try: ended (1 call, last 409)   confirm: -   cancel: compensated (1 call, last 200)"
        in lines
    )


async def abort_mid_call(
    client: aiohttp.ClientSession, sidecar: Sidecar, shop: Shop, saga: str, held: str
) -> dict[str, Any]:
    """Start ``saga``, abort it while the call ``held`` is in flight, release the call; return
    the saga once the abort ended it ``compensated``: a group's call in flight is left to
    finish, nothing is undone meanwhile."""
    gate, entered = shop.hold(held)
    saga_id = await start(client, sidecar, saga)
    await entered.wait()
    status, accepted = await post(client, f"{sidecar.admin_url}/sagas/{saga_id}/abort")
    assert status == 202, accepted
    _, meanwhile = await get_json(client, f"{sidecar.admin_url}/sagas/{saga_id}", TOKEN)
    assert meanwhile["status"] == "running", "the call in flight is left to finish"
    assert not any(c.startswith("DELETE") for c in shop.calls)
    gate.set()
    return await wait_for_status(
        client, sidecar.admin_url, saga_id, {"compensated"}, TOKEN, event="abort_finished"
    )


async def test_abort_of_a_group_in_flight_lets_the_call_finish_then_compensates_every_member(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    saga = await abort_mid_call(client, sidecar, shop, "checkout", "POST /shape/fraud")

    assert saga["failure_reason"].startswith("aborted by admin-api:")
    assert calls(saga) == {
        "reserve": [("action", 201), ("compensation", 200)],
        "coupon": [("action", 201), ("compensation", 200)],
        "fraud": [("action", 201), ("compensation", 200)],  # its answer came, then its undo
        "charge": [],
    }
    assert "POST /shape/charge" not in shop.calls
    abort = next(e for e in saga["events"] if e["action"] == "abort")
    assert abort["detail"]["in_flight"] == "left to finish, then compensated"


async def test_abort_of_a_tcc_group_lets_its_try_finish_then_cancels_refused_once_confirming(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    cancelled = await abort_mid_call(client, sidecar, shop, "transfer", "POST /shape/credit")
    trying = cancelled["id"]
    assert cancelled["phase"] == "cancel"
    cancels = [c for c in shop.calls if c.startswith("DELETE")]
    assert sorted(cancels[:2]) == [f"DELETE /shape/credit/{trying}", f"DELETE /shape/fee/{trying}"]
    assert cancels[2:] == [f"DELETE /shape/debit/{trying}"], "the group's, then the earlier step's"
    assert calls(cancelled)["credit"] == [("try", 201), ("cancel", 200)], "its try finished first"

    gate, confirming = shop.hold("POST /shape/debit/*/confirm")
    held = await start(client, sidecar, "transfer")
    await confirming.wait()
    status, problem = await post(client, f"{sidecar.admin_url}/sagas/{held}/abort")
    assert status == 409, problem
    assert "confirming" in problem["detail"]
    gate.set()
    done = await wait_for_status(client, sidecar.admin_url, held, TERMINAL, TOKEN)
    assert (done["status"], done["phase"]) == ("completed", "confirm")
    assert calls(done)["debit"] == [("try", 201), ("confirm", 201)]


async def fail_then_retry(
    client: aiohttp.ClientSession, sidecar: Sidecar, shop: Shop, saga: str, ends: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``saga`` until it ends ``failed`` (``shop.fails`` set by the caller), clear the
    failures, retry it over the admin API; return the saga as it failed and as it ``ends``."""
    saga_id = await start(client, sidecar, saga)
    failed = await wait_for_status(client, sidecar.admin_url, saga_id, TERMINAL, TOKEN)
    assert failed["status"] == "failed", failed
    shop.fails.clear()
    status, accepted = await post(client, f"{sidecar.admin_url}/sagas/{saga_id}/retry")
    assert status == 202, accepted
    ended = await wait_for_status(
        client, sidecar.admin_url, saga_id, {ends}, TOKEN, event="retry_finished"
    )
    return failed, ended


async def test_retry_of_a_tcc_saga_whose_confirm_ran_out_confirms_again_never_cancels(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    shop.fails.add("POST /shape/credit/*/confirm")
    failed, saga = await fail_then_retry(client, sidecar, shop, "transfer", "completed")

    assert failed["phase"] == "confirm"
    assert failed["steps"][1]["phases"]["confirm"]["status"] == "failed"
    assert calls(saga)["credit"] == [
        ("try", 201),
        ("confirm", 500),
        ("confirm", 500),
        ("confirm", 201),
    ]
    assert not any(c.startswith("DELETE") for c in shop.calls)


async def test_retry_of_a_group_whose_member_undo_ran_out_compensates_it(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(token=TOKEN)
    shop.refuses.add("POST /shape/charge")
    shop.fails.add("DELETE /shape/coupon/*")
    failed, saga = await fail_then_retry(client, sidecar, shop, "checkout", "compensated")

    assert [s["status"] for s in failed["steps"]] == [
        "compensated",
        "compensation_failed",
        "compensated",
        "failed",
    ]
    assert calls(saga)["coupon"] == [
        ("action", 201),
        ("compensation", 500),
        ("compensation", 500),
        ("compensation", 200),
    ]
    assert shop.calls.count(f"DELETE /shape/reserve/{saga['id']}") == 1
