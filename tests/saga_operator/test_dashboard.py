"""The dashboard, rendered by headless Chromium from an in-process sidecar (SQLite store).

Set ``DASHBOARD_SCREENSHOT_DIR=docs`` to refresh ``docs/dashboard.png`` (the list) and
``docs/dashboard-saga.png`` (one saga's timeline) from ``test_dashboard_screenshots``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from saga_operator.browser import Tab, dump_dom, open_page, screenshot
from saga_operator.conftest import Sidecar
from saga_operator.harness import TERMINAL, TOKEN, Seeder, wait_for_status
from saga_operator.shapes import GROUP, start
from saga_operator.shop import Shop
from saga_runner.states import SagaStatus

MakeSidecar = Callable[..., Awaitable[Sidecar]]
ROW_ID = re.compile(r'<td class="id"><a href="/dashboard/sagas/([^"]+)">')
XSS = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"


@pytest.fixture
def backend() -> str:
    """The dashboard reads through the same operations on both backends: SQLite suffices."""
    return "sqlite"


@dataclass(frozen=True)
class Scene:
    """A sidecar with real sagas (one per end state) and seeded ones."""

    sidecar: Sidecar
    completed: str
    compensated: str
    failed: str
    seeded_running: str
    seeded_refund: str


async def run_order(client: aiohttp.ClientSession, sidecar: Sidecar, order_no: str) -> str:
    """Run the async ``order`` saga to its end; return its id."""
    body = {"order_no": order_no, "card_number": "4111111111111111"}
    async with client.post(f"{sidecar.url}/api/orders", json=body) as response:
        assert response.status == 202, await response.text()
        saga_id: str = (await response.json())["saga_id"]
    await wait_for_status(client, sidecar.admin_url, saga_id, TERMINAL)
    return saga_id


@pytest.fixture
async def scene(
    make_sidecar: MakeSidecar, seeder: Seeder, shop: Shop, client: aiohttp.ClientSession
) -> Scene:
    """Seeded sagas an hour old, then three real ones: completed, compensated, failed."""
    running = await seeder.saga(SagaStatus.RUNNING, business_id="ORD-1001")
    refund = await seeder.saga(SagaStatus.COMPENSATED, name="refund", business_id="ORD-1002")
    sidecar = await make_sidecar()
    completed = await run_order(client, sidecar, "ORD-2001")
    shop.declines = True
    compensated = await run_order(client, sidecar, "ORD-2002")
    shop.delete_fails = True
    failed = await run_order(client, sidecar, "ORD-2003")
    shop.declines = shop.delete_fails = False
    return Scene(sidecar, completed, compensated, failed, running.id, refund.id)


def count_of(dom: str, label: str) -> int:
    """The number on the status card labelled ``label``."""
    pattern = rf'<span class="n">(\d+)</span><span class="label">{re.escape(label)}</span>'
    match = re.search(pattern, dom)
    assert match, f"no {label} card"
    return int(match.group(1))


async def test_dashboard_lists_sagas_newest_first_with_counts_by_status(scene: Scene) -> None:
    dom = await dump_dom(f"{scene.sidecar.admin_url}/dashboard")
    assert "<title>Sagas · saga-sidecar</title>" in dom
    assert ROW_ID.findall(dom) == [
        scene.failed,
        scene.compensated,
        scene.completed,
        scene.seeded_refund,
        scene.seeded_running,
    ]
    counts = {label: count_of(dom, label) for label in ("all", *SagaStatus)}
    assert counts == {
        "all": 5,
        "running": 1,
        "compensating": 0,
        "completed": 1,
        "compensated": 2,
        "failed": 1,
    }
    assert "ORD-2003" in dom and "compensation of step create_order failed" in dom
    assert '<option value="order"></option>' in dom  # saga names offered to the name filter


async def test_dashboard_filters_by_status_name_and_business_id(scene: Scene) -> None:
    base = f"{scene.sidecar.admin_url}/dashboard"
    by_status, by_name, by_business_id, nothing = await asyncio.gather(
        dump_dom(f"{base}?status=compensated"),
        dump_dom(f"{base}?name=order&status="),
        dump_dom(f"{base}?business_id=ORD-2001"),
        dump_dom(f"{base}?business_id=nobody"),
    )
    assert ROW_ID.findall(by_status) == [scene.compensated, scene.seeded_refund]
    assert '<option value="compensated" selected="">compensated</option>' in by_status
    assert ROW_ID.findall(by_name) == [scene.failed, scene.compensated, scene.completed]
    assert 'name="name" list="saga-names" value="order"' in by_name
    assert ROW_ID.findall(by_business_id) == [scene.completed]
    assert ROW_ID.findall(nothing) == []
    assert "No sagas match these filters." in nothing


async def test_dashboard_shows_one_sagas_step_timeline_with_attempts(scene: Scene) -> None:
    admin = scene.sidecar.admin_url
    page, by_query = await asyncio.gather(
        dump_dom(f"{admin}/dashboard/sagas/{scene.failed}"),
        dump_dom(f"{admin}/dashboard?saga={scene.failed}"),
    )
    for dom in (page, by_query):
        assert f"<dd>{scene.failed}</dd>" in dom
        steps = re.findall(r'<li class="step status-([a-z_]+)" id="step-(\d)">', dom)
        assert steps == [("compensation_failed", "0"), ("failed", "1")]
        assert "<strong>create_order</strong>" in dom and "<strong>charge</strong>" in dom
        calls = re.findall(
            r'<tr class="kind-(\w+)"><td>\w+</td><td>(\d)</td><td>[^<]+</td><td>[\d.]+ ms</td>'
            r'<td class="mono">(\d+)</td>',
            dom,
        )
        assert calls == [
            ("action", "1", "201"),
            ("compensation", "1", "500"),
            ("compensation", "2", "500"),
            ("action", "1", "402"),
        ]
        assert "<td>started</td>" in dom
        assert "4111111111111111" not in dom


async def test_dashboard_escapes_saga_data(
    make_sidecar: MakeSidecar, seeder: Seeder, client: aiohttp.ClientSession
) -> None:
    hostile = await seeder.saga(SagaStatus.FAILED, name="order", business_id=XSS)
    sidecar = await make_sidecar()
    listing, detail = await asyncio.gather(
        dump_dom(f"{sidecar.admin_url}/dashboard"),
        dump_dom(f"{sidecar.admin_url}/dashboard/sagas/{hostile.id}"),
    )
    for dom in (listing, detail):
        assert "pwned" not in re.search(r"<title>(.*)</title>", dom).group(1)  # type: ignore[union-attr]
        assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
        assert '<img src="x"' not in dom
        assert dom.count("<script") == 1  # the dashboard's own, and no other


async def test_dashboard_error_pages_are_html_with_a_strict_policy(
    make_sidecar: MakeSidecar, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar()
    cases = [
        (
            "/dashboard?status=<b>lost</b>",
            400,
            "unknown status &#x27;&lt;b&gt;lost&lt;/b&gt;&#x27;",
        ),
        ("/dashboard/sagas/missing", 404, "no saga missing"),
        ("/dashboard?saga=missing", 404, "no saga missing"),
    ]
    for path, status, text in cases:
        async with client.get(sidecar.admin_url + path) as response:
            assert response.status == status
            assert response.content_type == "text/html"
            assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert text in await response.text()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file (from its IHDR chunk)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_dashboard_screenshots(scene: Scene, tmp_path: Path) -> None:
    admin = scene.sidecar.admin_url
    shots = {
        "dashboard.png": (f"{admin}/dashboard", 860),
        "dashboard-saga.png": (f"{admin}/dashboard/sagas/{scene.failed}", 1400),
    }
    await asyncio.gather(
        *(screenshot(url, tmp_path / name, height=height) for name, (url, height) in shots.items())
    )
    for name, (_, height) in shots.items():
        assert png_size(tmp_path / name) == (1280, height)
        assert (tmp_path / name).stat().st_size > 20_000  # rendered content, not a blank page
    target = os.environ.get("DASHBOARD_SCREENSHOT_DIR")
    if target:
        for name in shots:
            shutil.copyfile(tmp_path / name, Path(target) / name)


BADGE = "document.querySelector('h1 .badge').textContent"


async def click_retry_and_see_the_saga_compensated(tab: Tab) -> None:
    """Click Retry on a failed saga's page; wait for the page to show it compensated."""
    assert await tab.evaluate(BADGE) == "failed"
    await tab.evaluate("window.sameDocument = true")
    await tab.evaluate("document.querySelector('button[data-action=retry]').click()")
    await tab.wait_for(f"{BADGE} === 'compensated'")
    assert await tab.evaluate("window.sameDocument") is True  # refreshed in place, not reloaded
    note = await tab.evaluate("document.getElementById('action-status').textContent")
    assert note.startswith("retry accepted"), note
    assert await tab.evaluate("document.querySelectorAll('button[data-action]').length") == 0


async def test_retry_button_runs_a_failed_saga_again_and_the_page_shows_it_end(
    scene: Scene, client: aiohttp.ClientSession
) -> None:
    admin = scene.sidecar.admin_url
    async with open_page(f"{admin}/dashboard/sagas/{scene.failed}?refresh=1") as tab:
        await click_retry_and_see_the_saga_compensated(tab)
    saga = await wait_for_status(client, admin, scene.failed, {"compensated"})
    retried = [e for e in saga["events"] if e["action"] == "retry"]
    assert [e["actor"] for e in retried] == ["admin-api:dashboard"]


async def test_with_an_admin_token_the_buttons_use_the_pages_own_credentials(
    scene: Scene, make_sidecar: MakeSidecar
) -> None:
    guarded = await make_sidecar(token=TOKEN)  # the same store, behind a token
    page = f"{guarded.admin_url}/dashboard/sagas/{scene.failed}"
    refused = await dump_dom(page)
    assert "Bearer" in refused and "<h1>" not in refused  # no token, no page
    async with open_page(page, headers={"Authorization": f"Bearer {TOKEN}"}) as tab:
        await click_retry_and_see_the_saga_compensated(tab)


async def test_the_list_refreshes_itself_while_sagas_change(
    scene: Scene, client: aiohttp.ClientSession
) -> None:
    admin = scene.sidecar.admin_url
    async with open_page(f"{admin}/dashboard?refresh=1") as tab:
        await tab.evaluate("window.sameDocument = true")
        assert await tab.evaluate("document.getElementById('auto-refresh').checked") is True
        assert count_of(await tab.evaluate("document.body.innerHTML"), "failed") == 1
        async with client.post(
            f"{admin}/sagas/{scene.failed}/retry", json={"actor": "curl"}
        ) as response:
            assert response.status == 202
        await tab.wait_for(
            "[...document.querySelectorAll('.count.status-failed .n')].map(n => n.textContent)"
            ".join() === '0'"
        )
        assert await tab.evaluate("window.sameDocument") is True


async def test_auto_refresh_can_be_paused(scene: Scene, client: aiohttp.ClientSession) -> None:
    admin = scene.sidecar.admin_url
    async with open_page(f"{admin}/dashboard?refresh=1") as tab:
        await tab.evaluate("document.getElementById('auto-refresh').click()")
        stamp = await tab.evaluate("document.querySelector('.generated').textContent")
        async with client.post(f"{admin}/sagas/{scene.failed}/retry", json={}) as response:
            assert response.status == 202
        await wait_for_status(client, admin, scene.failed, {"compensated"})
        await asyncio.sleep(2.5)
        assert await tab.evaluate("document.querySelector('.generated').textContent") == stamp
        assert count_of(await tab.evaluate("document.body.innerHTML"), "failed") == 1
        await tab.goto(f"{admin}/dashboard?refresh=1")  # the pause outlives the page
        assert await tab.evaluate("document.getElementById('auto-refresh').checked") is False


async def test_buttons_offered_follow_the_sagas_status(scene: Scene) -> None:
    admin = scene.sidecar.admin_url
    pages = await asyncio.gather(
        *(
            dump_dom(f"{admin}/dashboard/sagas/{saga_id}")
            for saga_id in (scene.failed, scene.seeded_running, scene.completed)
        )
    )
    offered = [re.findall(r'data-action="(\w+)"', dom) for dom in pages]
    assert offered == [["retry"], ["retry", "abort"], []]


MEMBER_BOXES = """[...document.querySelectorAll('#stage-0 .members > .step')].map((e) => {
  const box = e.getBoundingClientRect();
  return [e.querySelector('strong').textContent, box.left, box.top, box.right, box.bottom];
})"""
CHARGE_TOP = "document.querySelector('#step-3').getBoundingClientRect().top"
PHASES = """[...document.querySelectorAll('.step')].map((step) => [
  step.querySelector('strong').textContent,
  [...step.querySelectorAll('.phase')].map((cell) => [
    cell.querySelector('.phase-name').textContent,
    cell.querySelector('b').textContent,
    cell.classList.contains('current'),
    cell.getBoundingClientRect().height > 0,
  ]),
])"""


async def test_a_groups_members_are_drawn_side_by_side_and_tcc_phases_are_shown(
    make_sidecar: MakeSidecar, shop: Shop, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar()
    shop.refuses.add("POST /shape/fraud")
    group = await start(client, sidecar, "checkout")
    await wait_for_status(client, sidecar.admin_url, group, TERMINAL)
    shop.refuses = {"POST /shape/credit"}
    transfer = await start(client, sidecar, "transfer")
    await wait_for_status(client, sidecar.admin_url, transfer, TERMINAL)

    async with open_page(f"{sidecar.admin_url}/dashboard/sagas/{group}?refresh=0") as tab:
        boxes = await tab.evaluate(MEMBER_BOXES)
        charge_top = await tab.evaluate(CHARGE_TOP)
        head = await tab.evaluate("document.querySelector('#stage-0 .stage-head').textContent")
    assert [name for name, *_ in boxes] == list(GROUP)
    assert len({round(top) for _, _, top, _, _ in boxes}) == 1, f"not on one row: {boxes}"
    for (_, _, _, right, _), (_, left, _, _, _) in itertools.pairwise(boxes):
        assert right <= left, f"members overlap or are not left to right: {boxes}"
    assert charge_top > max(bottom for *_, bottom in boxes), "the next stage is below the group"
    assert head == "stage 0 · parallel · 3 steps"

    async with open_page(f"{sidecar.admin_url}/dashboard/sagas/{transfer}?refresh=0") as tab:
        phase = await tab.evaluate("document.querySelector('h1 .saga-phase').textContent")
        phases = await tab.evaluate(PHASES)
    assert phase == "cancel"
    assert phases == [
        ["debit", [["try", "ended", False, True], ["confirm", "-", False, True],
                   ["cancel", "compensated", True, True]]],
        ["credit", [["try", "ended", False, True], ["confirm", "-", False, True],
                    ["cancel", "compensated", True, True]]],
        ["fee", [["try", "ended", False, True], ["confirm", "-", False, True],
                 ["cancel", "compensated", True, True]]],
    ]  # fmt: skip
