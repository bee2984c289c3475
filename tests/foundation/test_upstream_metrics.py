"""What an Envoy user reads off ``/metrics``: upstream latency and errors by kind, the release,
the process; and no series a client can multiply.

Sidecar subprocesses in front of a raw upstream that misbehaves per path, over real sockets:
each failure adds one to ``upstream_errors_total`` of its kind and nothing to the others, and
every forwarded request is timed in ``upstream_request_duration_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import string
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from foundation.rawserver import Peer, RawServer, response

if TYPE_CHECKING:
    from conftest import AppThread, Sidecar, Upstream

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
OPERATIONS = PYPROJECT.parent / "docs" / "OPERATIONS.md"
TIMEOUT = 0.3
SLOW = 1.0
KINDS = ("connect", "timeout", "reset", "overflow", "upgrade")
HEAD_100 = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
HEAD_1M = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def misbehave(peer: Peer) -> None:
    """Answer by path: ``/ok``; ``/slow`` after ``SLOW`` s; ``/cut`` and ``/cut-large`` close
    mid-body; ``/stall`` stops sending mid-body; ``/drop`` closes without an answer;
    ``/upgrade`` answers 101."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while (request := await peer.request()) is not None:
            path = request.split(b" ", 2)[1]
            if path == b"/ok":
                await peer.send(response("200 OK", b"ok"))
            elif path == b"/slow":
                await asyncio.sleep(SLOW)
                await peer.send(response("200 OK", b"late"))
            elif path == b"/cut":
                await peer.send(HEAD_100 + b"x" * 10)
                return
            elif path == b"/cut-large":
                await peer.send(HEAD_1M + b"x" * 65536)
                return
            elif path == b"/stall":
                await peer.send(HEAD_100 + b"x" * 10)
                await asyncio.sleep(SLOW)
                return
            elif path == b"/upgrade":
                await peer.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
                return
            else:  # /drop
                return


@pytest.fixture(scope="module")
def raw_upstream(background_loop: AppThread) -> Iterator[RawServer]:
    """The misbehaving upstream, on the background loop for the whole module."""
    server = RawServer(misbehave)
    background_loop.run(server.start())
    yield server
    background_loop.run(server.close())
    assert not server.errors, server.errors


@pytest.fixture(scope="module")
def sidecar(module_sidecar_process: Callable[..., Sidecar], raw_upstream: RawServer) -> Sidecar:
    """A sidecar with a 300 ms upstream timeout in front of the misbehaving upstream."""
    return module_sidecar_process({"upstream": {"url": raw_upstream.url, "timeout": "300ms"}})


async def scrape(sidecar: Sidecar) -> Samples:
    """Every sample of the sidecar's ``/metrics``: (name, sorted labels) -> value."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sidecar.admin_url}/metrics") as answer,
    ):
        assert answer.status == 200
        text = await answer.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def errors(samples: Samples) -> dict[str, float]:
    """``upstream_errors_total`` by kind."""
    return {kind: samples[("upstream_errors_total", (("kind", kind),))] for kind in KINDS}


def duration(samples: Samples, part: str) -> float:
    """``upstream_request_duration_seconds_{part}`` (``count`` or ``sum``)."""
    return samples[(f"upstream_request_duration_seconds_{part}", ())]


def added(before: Samples, after: Samples) -> dict[str, float]:
    """How much each kind of upstream error grew."""
    old, new = errors(before), errors(after)
    return {kind: new[kind] - old[kind] for kind in KINDS}


async def get(sidecar: Sidecar, path: str) -> int:
    """GET ``path`` through the sidecar; the status the client got."""
    async with aiohttp.ClientSession() as session, session.get(sidecar.url + path) as answer:
        await answer.read()
        return answer.status


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/cut", 502, "reset"),
        ("/drop", 502, "reset"),
        ("/slow", 504, "timeout"),
        ("/stall", 502, "timeout"),
        ("/upgrade", 502, "upgrade"),
    ],
)
async def test_each_upstream_failure_counts_once_under_its_kind(
    sidecar: Sidecar, path: str, status: int, kind: str
) -> None:
    before = await scrape(sidecar)
    assert await get(sidecar, path) == status
    after = await scrape(sidecar)
    assert added(before, after) == {k: float(k == kind) for k in KINDS}
    assert duration(after, "count") - duration(before, "count") == 1


async def test_a_body_cut_after_the_client_got_the_headers_counts_as_a_reset(
    sidecar: Sidecar,
) -> None:
    before = await scrape(sidecar)
    async with aiohttp.ClientSession() as session, session.get(sidecar.url + "/cut-large") as got:
        assert got.status == 200  # streamed on: the headers went out before the body broke
        with pytest.raises(aiohttp.ClientPayloadError):
            await got.read()
    after = await scrape(sidecar)
    assert added(before, after) == {k: float(k == "reset") for k in KINDS}


async def test_an_answer_is_timed_and_counts_no_error(sidecar: Sidecar) -> None:
    before = await scrape(sidecar)
    assert await get(sidecar, "/ok") == 200
    after = await scrape(sidecar)
    assert added(before, after) == dict.fromkeys(KINDS, 0.0)
    assert duration(after, "count") - duration(before, "count") == 1
    assert 0 < duration(after, "sum") - duration(before, "sum") < TIMEOUT


async def test_a_timeout_is_timed_at_the_upstream_timeout(sidecar: Sidecar) -> None:
    before = await scrape(sidecar)
    assert await get(sidecar, "/slow") == 504
    after = await scrape(sidecar)
    assert TIMEOUT <= duration(after, "sum") - duration(before, "sum") < SLOW


async def test_a_closed_port_counts_as_connect(
    sidecar_process: Callable[..., Sidecar], free_port: Callable[[], int]
) -> None:
    orphan = sidecar_process({"upstream": {"url": f"http://127.0.0.1:{free_port()}"}})
    before = await scrape(orphan)
    assert before[("upstream_errors_total", (("kind", "connect"),))] == 0
    assert await get(orphan, "/anything") == 502
    after = await scrape(orphan)
    assert added(before, after) == {k: float(k == "connect") for k in KINDS}
    assert duration(after, "count") == 1


async def test_no_free_pooled_connection_counts_as_overflow(
    sidecar_process: Callable[..., Sidecar], raw_upstream: RawServer
) -> None:
    narrow = sidecar_process(
        {
            "upstream": {
                "url": raw_upstream.url,
                "timeout": "5s",
                "max_connections": 1,
                "pool_timeout": "100ms",
            }
        }
    )

    def slow_requests() -> int:
        return sum(b" /slow " in r for peer in list(raw_upstream.peers) for r in peer.requests)

    before, seen = await scrape(narrow), slow_requests()
    slow = asyncio.create_task(get(narrow, "/slow"))
    deadline = time.monotonic() + 5
    while slow_requests() == seen:  # the one connection is busy with it now
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert await get(narrow, "/ok") == 503
    assert await slow == 200
    after = await scrape(narrow)
    assert added(before, after) == {k: float(k == "overflow") for k in KINDS}


async def test_build_info_names_the_installed_release_and_process_metrics_are_exported(
    sidecar: Sidecar,
) -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]
    samples = await scrape(sidecar)
    build = [labels for name, labels in samples if name == "saga_sidecar_build_info"]
    assert build == [(("version", declared["version"]),)]
    assert samples[("saga_sidecar_build_info", build[0])] == 1
    assert samples[("process_resident_memory_bytes", ())] > 10 * 2**20
    assert samples[("process_cpu_seconds_total", ())] > 0
    assert samples[("process_open_fds", ())] > 0
    assert abs(samples[("process_start_time_seconds", ())] - time.time()) < 600
    assert any(name == "python_info" for name, _ in samples)


@pytest.fixture(scope="module")
def echo_sidecar(module_sidecar_process: Callable[..., Sidecar], upstream: Upstream) -> Sidecar:
    """A sidecar in front of the echo upstream (it answers any method on any path)."""
    return module_sidecar_process({"upstream": {"url": upstream.url}})


async def test_random_paths_and_methods_add_no_series(echo_sidecar: Sidecar) -> None:
    rng = random.Random(16)
    methods = ["PROPFIND", "MKCOL", "PURGE", "REPORT", "SEARCH", "LOCK", "UNLOCK", "COPY"]

    def path() -> str:
        return "/" + "".join(rng.choices(string.ascii_lowercase, k=12))

    async with aiohttp.ClientSession() as session:

        async def send(method: str) -> None:
            async with session.request(method, echo_sidecar.url + path()) as answer:
                assert answer.status == 200, method
                await answer.read()

        await send("GET")
        await send(methods[0])
        before = await scrape(echo_sidecar)
        for _ in range(40):
            await send(rng.choice(methods))
            await send("GET")
    after = await scrape(echo_sidecar)
    assert after.keys() == before.keys()
    other = ("http_requests_total", (("method", "_OTHER"), ("status", "200")))
    assert after[other] - before[other] == 40


def documented_metrics() -> set[str]:
    """The metric names in the first column of docs/OPERATIONS.md's Metrics table."""
    section = OPERATIONS.read_text().split("\n### Metrics\n", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split(" | ")[0])}


async def test_the_operations_guide_lists_exactly_the_exported_metrics(sidecar: Sidecar) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sidecar.admin_url}/metrics") as answer,
    ):
        text = await answer.text()
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
    }
    assert documented_metrics() == exported
