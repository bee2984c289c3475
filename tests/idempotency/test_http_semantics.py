"""docs/IDEMPOTENCY.md end to end: a real client, an in-process sidecar on a real port, a real
upstream."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from idempotency.conftest import InProcessSidecar, SidecarFactory
from idempotency.upstream import CountingUpstream
from proxy.keys import METRICS

KEY = "Idempotency-Key"
PROBLEM = "application/problem+json"
# Headers a replay may legitimately differ in: per-response values the sidecar regenerates.
REGENERATED = {"date", "x-request-id", "idempotent-replayed", "set-cookie", "content-length"}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps no cookies and does not decompress."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    ) as session:
        yield session


class Reply:
    """A response read whole."""

    def __init__(self, response: aiohttp.ClientResponse, body: bytes) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = body

    @property
    def replayed(self) -> bool:
        """Whether the sidecar marked this as a replay."""
        return self.headers.get("Idempotent-Replayed") == "true"

    def problem(self) -> dict[str, Any]:
        """The problem+json document, checked for the RFC 9457 members."""
        assert self.headers["Content-Type"] == PROBLEM
        document: dict[str, Any] = json.loads(self.body)
        assert {"type", "title", "status", "detail"} <= document.keys()
        assert document["status"] == self.status
        return document

    def stored_headers(self) -> list[tuple[str, str]]:
        """Headers a replay must repeat exactly."""
        return sorted(
            (k.lower(), v) for k, v in self.headers.items() if k.lower() not in REGENERATED
        )


async def send(
    client: aiohttp.ClientSession,
    method: str,
    url: str,
    key: str | None = None,
    body: bytes = b'{"amount": 100}',
    headers: dict[str, str] | None = None,
) -> Reply:
    """Send one request and read its whole answer."""
    all_headers = {**({KEY: key} if key is not None else {}), **(headers or {})}
    async with client.request(method, url, data=body, headers=all_headers) as response:
        return Reply(response, await response.read())


@pytest.fixture(params=["memory", "redis"])
async def guarded(
    request: pytest.FixtureRequest,
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
) -> tuple[InProcessSidecar, CountingUpstream]:
    """A sidecar in front of the counting upstream, with each store in turn."""
    upstream, url = counting_upstream
    store = {"store": "memory://"} if request.param == "memory" else {}
    return await sidecar(url, idempotency=store), upstream


async def test_first_call_executes_and_the_replay_is_byte_identical(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, upstream = guarded
    first = await send(client, "POST", f"{proxy.url}/charge?x=1", "order-1")
    replay = await send(client, "POST", f"{proxy.url}/charge?x=1", "order-1")

    assert upstream.executions["/charge"] == 1
    assert first.status == replay.status == 201
    assert replay.body == first.body
    assert replay.stored_headers() == first.stored_headers()
    assert ("etag", '"v1"') in replay.stored_headers()
    assert ("location", "/charges/ch_1") in replay.stored_headers()
    assert not first.replayed and replay.replayed
    assert replay.headers["Content-Length"] == str(len(first.body))
    assert upstream.keys_seen == ["order-1"]
    assert proxy.metric("idempotency_requests_total") == 2
    assert proxy.metric("idempotency_cache_hits_total") == 1


async def test_set_cookie_reaches_the_first_client_but_is_never_replayed(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, _ = guarded
    first = await send(client, "POST", f"{proxy.url}/charge", "cookie-1")
    replay = await send(client, "POST", f"{proxy.url}/charge", "cookie-1")
    assert "session=s1" in first.headers["Set-Cookie"]
    assert replay.replayed and "Set-Cookie" not in replay.headers


async def test_replay_regenerates_date(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    _, url = counting_upstream
    proxy = await sidecar(url)
    first = await send(client, "POST", f"{proxy.url}/charge", "date-1")
    await asyncio.sleep(1.1)
    replay = await send(client, "POST", f"{proxy.url}/charge", "date-1")
    assert replay.replayed
    assert replay.headers["Date"] != first.headers["Date"]


@pytest.mark.parametrize("variant", ["body", "path", "query", "method"])
async def test_same_key_on_a_different_request_gets_422(
    guarded: tuple[InProcessSidecar, CountingUpstream],
    client: aiohttp.ClientSession,
    variant: str,
) -> None:
    proxy, upstream = guarded
    await send(client, "POST", f"{proxy.url}/charge?x=1", "reuse-1")
    method, path, body = "POST", "/charge?x=1", b'{"amount": 100}'
    if variant == "body":
        body = b'{"amount": 999}'
    elif variant == "path":
        path = "/other?x=1"
    elif variant == "query":
        path = "/charge?x=2"
    else:
        method = "PUT"
    reply = await send(client, method, f"{proxy.url}{path}", "reuse-1", body=body)

    assert reply.status == 422
    assert reply.problem()["type"].endswith("idempotency-mismatch")
    assert upstream.total == 1
    assert proxy.metric("idempotency_mismatches_total") == 1


async def test_duplicate_while_in_flight_gets_409_with_retry_after(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, upstream = guarded
    first = asyncio.create_task(send(client, "POST", f"{proxy.url}/slow/0.5", "slow-1"))
    await asyncio.sleep(0.2)
    duplicate = await send(client, "POST", f"{proxy.url}/slow/0.5", "slow-1")
    assert duplicate.status == 409
    assert duplicate.headers["Retry-After"] == "1"
    assert duplicate.problem()["type"].endswith("idempotency-in-flight")
    assert (await first).status == 201
    retry = await send(client, "POST", f"{proxy.url}/slow/0.5", "slow-1")
    assert retry.status == 201 and retry.replayed
    assert upstream.executions["/slow/0.5"] == 1
    assert proxy.metric("idempotency_conflicts_total") == 1


async def test_in_flight_duplicate_with_another_body_gets_422_not_409(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, _ = guarded
    first = asyncio.create_task(send(client, "POST", f"{proxy.url}/slow/0.4", "slow-2"))
    await asyncio.sleep(0.15)
    other = await send(client, "POST", f"{proxy.url}/slow/0.4", "slow-2", body=b"different")
    assert other.status == 422
    await first


@pytest.mark.parametrize(
    ("header_lines", "detail"),
    [
        ([(KEY, "")], "1 to 255"),
        ([(KEY, "a" * 256)], "1 to 255"),
        ([(KEY, "has space")], "visible ASCII"),
        ([(KEY, "caf\u00e9")], "visible ASCII"),
        ([(KEY, '"unterminated')], "closing quote"),
        ([(KEY, '"a"b')], "after the quoted key"),
        ([(KEY, "one"), (KEY, "two")], "more than one"),
    ],
)
async def test_bad_or_duplicated_key_gets_400(
    guarded: tuple[InProcessSidecar, CountingUpstream],
    client: aiohttp.ClientSession,
    header_lines: list[tuple[str, str]],
    detail: str,
) -> None:
    proxy, upstream = guarded
    async with client.post(f"{proxy.url}/charge", data=b"{}", headers=header_lines) as response:
        reply = Reply(response, await response.read())
    assert reply.status == 400
    assert detail in reply.problem()["detail"]
    assert upstream.total == 0


async def test_quoted_and_bare_forms_name_the_same_key(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, upstream = guarded
    first = await send(client, "POST", f"{proxy.url}/charge", '"8e03978e-40d5"')
    second = await send(client, "POST", f"{proxy.url}/charge", "8e03978e-40d5")
    assert second.replayed and second.body == first.body
    assert upstream.total == 1


async def test_missing_key_passes_through_unless_required(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(
        url, idempotency={"routes": [{"path": "/api/v1/payments*", "require_key": True}]}
    )
    for _ in range(2):
        assert (await send(client, "POST", f"{proxy.url}/charge")).status == 201
    required = await send(client, "POST", f"{proxy.url}/api/v1/payments")
    assert required.status == 400
    assert required.problem()["type"].endswith("idempotency-key-missing")
    assert upstream.executions == {"/charge": 2}
    assert proxy.metric("idempotency_requests_total") == 0


async def test_tenants_are_separated_by_authorization(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, upstream = guarded
    alice = {"Authorization": "Bearer alice-token"}
    bob = {"Authorization": "Bearer bob-token"}
    first_alice = await send(client, "POST", f"{proxy.url}/charge", "shared-key", headers=alice)
    first_bob = await send(client, "POST", f"{proxy.url}/charge", "shared-key", headers=bob)
    other_body = await send(
        client,
        "POST",
        f"{proxy.url}/charge",
        "shared-key",
        body=b"x",
        headers={"Authorization": "Bearer carol"},
    )
    again_alice = await send(client, "POST", f"{proxy.url}/charge", "shared-key", headers=alice)

    assert not first_bob.replayed and first_bob.body != first_alice.body
    assert other_body.status == 201 and not other_body.replayed
    assert again_alice.replayed and again_alice.body == first_alice.body
    assert upstream.executions["/charge"] == 3


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "DELETE"])
async def test_uncovered_methods_pass_through_untouched(
    guarded: tuple[InProcessSidecar, CountingUpstream],
    client: aiohttp.ClientSession,
    method: str,
) -> None:
    proxy, upstream = guarded
    replies = [
        await send(client, method, f"{proxy.url}/read", "same-key", body=b"") for _ in range(2)
    ]
    assert [reply.status for reply in replies] == [200, 200]
    assert not any(reply.replayed for reply in replies)
    assert upstream.executions["/read"] == 2
    assert upstream.keys_seen == ["same-key", "same-key"]
    assert proxy.metric("idempotency_requests_total") == 0


async def test_disabled_route_is_not_covered_and_first_match_wins(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    routes = [
        {"path": "/webhooks/keep/*", "enabled": True},
        {"path": "/webhooks/*", "enabled": False},
    ]
    proxy = await sidecar(url, idempotency={"routes": routes})
    for _ in range(2):
        await send(client, "POST", f"{proxy.url}/webhooks/in", "hook-1")
        await send(client, "POST", f"{proxy.url}/webhooks/keep/x", "hook-2")
    assert upstream.executions == {"/webhooks/in": 2, "/webhooks/keep/x": 1}


@pytest.mark.parametrize("status", [200, 201, 202, 204, 301, 400, 402, 404, 409, 410, 422])
async def test_final_answers_are_stored_and_replayed(
    guarded: tuple[InProcessSidecar, CountingUpstream],
    client: aiohttp.ClientSession,
    status: int,
) -> None:
    proxy, upstream = guarded
    first = await send(client, "POST", f"{proxy.url}/status/{status}", f"s-{status}")
    replay = await send(client, "POST", f"{proxy.url}/status/{status}", f"s-{status}")
    assert first.status == replay.status == status
    assert replay.replayed and replay.body == first.body
    assert upstream.executions[f"/status/{status}"] == 1


@pytest.mark.parametrize("status", [408, 425, 429, 503])
async def test_not_processed_answers_release_the_key(
    guarded: tuple[InProcessSidecar, CountingUpstream],
    client: aiohttp.ClientSession,
    status: int,
) -> None:
    proxy, upstream = guarded
    for _ in range(2):
        reply = await send(client, "POST", f"{proxy.url}/status/{status}", f"r-{status}")
        assert reply.status == status and not reply.replayed
    assert upstream.executions[f"/status/{status}"] == 2


@pytest.mark.parametrize(
    ("outcome", "executions", "replayed"), [("hold", 1, True), ("release", 2, False)]
)
@pytest.mark.parametrize("status", [500, 502, 504])
async def test_server_errors_follow_unknown_outcome(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
    status: int,
    outcome: str,
    executions: int,
    replayed: bool,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url, idempotency={"unknown_outcome": outcome})
    replies = [await send(client, "POST", f"{proxy.url}/status/{status}", "e-1") for _ in range(2)]
    assert [reply.status for reply in replies] == [status, status]
    assert replies[1].replayed is replayed
    assert upstream.executions[f"/status/{status}"] == executions


async def test_unknown_outcome_is_settable_per_route(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    routes = [{"path": "/status/*", "unknown_outcome": "release"}]
    proxy = await sidecar(url, idempotency={"unknown_outcome": "hold", "routes": routes})
    for _ in range(2):
        await send(client, "POST", f"{proxy.url}/status/500", "per-route")
        await send(client, "POST", f"{proxy.url}/charge", "per-route-2")
    assert upstream.executions == {"/status/500": 2, "/charge": 1}


async def test_timeout_after_sending_is_held_as_a_504_problem_and_replayed(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url, upstream={"url": url, "timeout": "300ms"})
    first = await send(client, "POST", f"{proxy.url}/slow/1", "t-1")
    replay = await send(client, "POST", f"{proxy.url}/slow/1", "t-1")
    assert first.status == replay.status == 504
    assert "may or may not have taken effect" in first.problem()["detail"]
    assert replay.replayed and replay.body == first.body
    assert upstream.executions["/slow/1"] == 1


async def test_timeout_with_release_lets_the_retry_execute(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(
        url, upstream={"url": url, "timeout": "300ms"}, idempotency={"unknown_outcome": "release"}
    )
    for _ in range(2):
        reply = await send(client, "POST", f"{proxy.url}/slow/1", "t-2")
        assert reply.status == 504 and not reply.replayed
    assert upstream.executions["/slow/1"] == 2


async def test_unreachable_upstream_releases_the_key(
    sidecar: SidecarFactory, client: aiohttp.ClientSession, free_port: Any
) -> None:
    proxy = await sidecar(f"http://127.0.0.1:{free_port()}")
    for _ in range(2):
        reply = await send(client, "POST", f"{proxy.url}/charge", "down-1")
        assert reply.status == 502 and not reply.replayed
    assert proxy.metric("idempotency_conflicts_total") == 0


async def test_body_over_max_body_is_delivered_and_duplicates_get_409(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url, idempotency={"max_body": "1KiB"})
    first = await send(client, "POST", f"{proxy.url}/big/300000", "big-1")
    duplicate = await send(client, "POST", f"{proxy.url}/big/300000", "big-1")
    small = await send(client, "POST", f"{proxy.url}/big/1000", "big-2")
    small_replay = await send(client, "POST", f"{proxy.url}/big/1000", "big-2")

    assert first.status == 201 and first.body == b"b" * 300000
    assert duplicate.status == 409
    problem = duplicate.problem()
    assert "finished with status 201" in problem["detail"]
    assert problem["type"].endswith("idempotency-not-retained")
    assert small_replay.replayed and small_replay.body == small.body
    assert upstream.executions == {"/big/300000": 1, "/big/1000": 1}
    assert proxy.metric("idempotency_not_stored_total", reason="max_body") == 1


async def test_body_cut_short_is_never_executed_twice(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, upstream = guarded
    first = await send(client, "POST", f"{proxy.url}/cut", "cut-1")
    duplicate = await send(client, "POST", f"{proxy.url}/cut", "cut-1")
    assert first.status == 502
    assert duplicate.status == 409 and "finished with status 201" in duplicate.problem()["detail"]
    assert upstream.executions["/cut"] == 1


async def test_compressed_body_is_replayed_as_sent(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, _ = guarded
    first = await send(client, "POST", f"{proxy.url}/gzip", "gz-1")
    replay = await send(client, "POST", f"{proxy.url}/gzip", "gz-1")
    assert replay.headers["Content-Encoding"] == "gzip"
    assert replay.body == first.body and replay.body[:2] == b"\x1f\x8b"


async def test_covered_body_over_max_request_body_gets_413_without_calling_upstream(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url, idempotency={"max_request_body": "1KiB"})
    declared = await send(client, "POST", f"{proxy.url}/charge", "huge-1", body=b"x" * 2048)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 512

    async with client.post(f"{proxy.url}/charge", data=chunks(), headers={KEY: "huge-2"}) as resp:
        streamed = Reply(resp, await resp.read())
    uncovered = await send(client, "POST", f"{proxy.url}/charge", body=b"x" * 2048)

    assert declared.status == streamed.status == 413
    declared.problem()
    assert uncovered.status == 201
    assert upstream.executions["/charge"] == 1


async def test_concurrent_wait_gives_duplicates_the_replay(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url, idempotency={"concurrent": "wait"})
    replies = await asyncio.gather(
        *(send(client, "POST", f"{proxy.url}/slow/0.3", "wait-1") for _ in range(10))
    )
    assert [reply.status for reply in replies] == [201] * 10
    assert sum(not reply.replayed for reply in replies) == 1
    assert upstream.executions["/slow/0.3"] == 1


async def test_prefer_wait_lets_one_client_wait(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, upstream = guarded
    first = asyncio.create_task(send(client, "POST", f"{proxy.url}/slow/0.4", "pw-1"))
    await asyncio.sleep(0.1)
    waited = await send(
        client, "POST", f"{proxy.url}/slow/0.4", "pw-1", headers={"Prefer": "wait=5"}
    )
    assert (await first).status == 201
    assert waited.status == 201 and waited.replayed
    assert upstream.executions["/slow/0.4"] == 1


async def test_prefer_wait_shorter_than_the_call_gets_409(
    guarded: tuple[InProcessSidecar, CountingUpstream], client: aiohttp.ClientSession
) -> None:
    proxy, _ = guarded
    first = asyncio.create_task(send(client, "POST", f"{proxy.url}/slow/1", "pw-2"))
    await asyncio.sleep(0.1)
    waited = await send(
        client, "POST", f"{proxy.url}/slow/1", "pw-2", headers={"Prefer": "respond-async, wait=0"}
    )
    assert waited.status == 409
    await first


async def test_waiter_executes_itself_when_the_first_is_released(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url, idempotency={"concurrent": "wait"})
    replies = await asyncio.gather(
        *(send(client, "POST", f"{proxy.url}/status/503", "w-503") for _ in range(3))
    )
    assert [reply.status for reply in replies] == [503] * 3
    assert upstream.executions["/status/503"] == 3


async def test_access_log_records_each_idempotency_outcome(
    guarded: tuple[InProcessSidecar, CountingUpstream],
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, _ = guarded
    caplog.set_level(logging.INFO, logger="saga_sidecar.access")
    first = asyncio.create_task(send(client, "POST", f"{proxy.url}/slow/0.3", "log-1"))
    await asyncio.sleep(0.1)
    await send(client, "POST", f"{proxy.url}/slow/0.3", "log-1")
    await first
    await send(client, "POST", f"{proxy.url}/slow/0.3", "log-1")
    await send(client, "POST", f"{proxy.url}/slow/0.3", "log-1", body=b"other")
    await send(client, "POST", f"{proxy.url}/slow/0.3")
    outcomes = [
        getattr(record, "idempotency", None)
        for record in caplog.records
        if record.name == "saga_sidecar.access"
    ]
    assert outcomes == ["conflict", "miss", "hit", "mismatch", "bypass"]


async def test_store_error_counters_are_exported_from_the_start(
    guarded: tuple[InProcessSidecar, CountingUpstream],
) -> None:
    proxy, _ = guarded
    for action in ("reject", "pass", "wait", "complete", "release", "renew"):
        assert (
            proxy.app[METRICS].registry.get_sample_value(
                "idempotency_store_errors_total", {"action": action}
            )
            == 0.0
        )
