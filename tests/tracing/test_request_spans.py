"""A traced sidecar subprocess exports the span tree of each proxied request to a real receiver.

Forwarded: SERVER span (the incoming traceparent's child) → idempotency decision → CLIENT span,
whose traceparent is what the app receives. Replayed: the decision says ``hit`` and there is no
CLIENT span. A request without a traceparent starts a trace; ``sample_ratio`` applies to new
traces only; the spans still queued at shutdown are exported; a collector that is down never
fails a request and is logged once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from conftest import Sidecar, find_free_port

from tracing.conftest import Recorder, new_traceparent
from tracing.otlp import OtlpReceiver, ReceivedSpan, names, one

KEY = "order-42-secret-key"


def has(*names: str) -> Callable[[list[ReceivedSpan]], bool]:
    """A ``wait_for`` check: spans with each of ``names`` were received."""
    return lambda spans: all(any(s.name == n for s in spans) for n in names)


async def post_order(
    client: aiohttp.ClientSession, sidecar: Sidecar, traceparent: str, key: str = KEY
) -> int:
    headers = {"Idempotency-Key": key, "traceparent": traceparent}
    async with client.post(f"{sidecar.url}/orders", json={"n": 1}, headers=headers) as response:
        await response.read()
        return response.status


async def test_forwarded_request_is_server_then_decision_then_client_span(
    traced_sidecar: Callable[..., Sidecar],
    receiver: OtlpReceiver,
    recorder: Recorder,
    client: aiohttp.ClientSession,
) -> None:
    sidecar = traced_sidecar()
    incoming = new_traceparent()

    assert await post_order(client, sidecar, incoming.traceparent) == 201

    spans = await receiver.wait_for(
        lambda spans: len(receiver.trace(incoming.trace_id)) >= 3, "three spans of the trace"
    )
    spans = receiver.trace(incoming.trace_id)
    server = one(spans, kind="server")
    decision = one(spans, name="idempotency")
    upstream = one(spans, kind="client")
    assert server.parent_span_id == incoming.span_id
    assert decision.parent_span_id == server.span_id
    assert upstream.parent_span_id == decision.span_id
    assert server.name == "POST"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["url.path"] == "/orders"
    assert server.attributes["http.response.status_code"] == 201
    assert server.attributes["idempotency.outcome"] == "miss"
    assert decision.attributes["idempotency.outcome"] == "miss"
    assert upstream.attributes["http.response.status_code"] == 201
    assert upstream.attributes["url.full"] == f"{sidecar.config['upstream']['url']}/orders"
    assert server.resource["service.name"] == "saga-sidecar"
    (call,) = recorder.to("/orders")
    assert names(call.headers["traceparent"], upstream)
    assert "tracestate" not in call.headers
    for span in spans:  # the key is never exported, in any form a reader could reverse
        assert KEY not in repr(span.attributes)
    assert receiver.content_types == {"application/x-protobuf"}


async def test_replay_is_a_hit_decision_without_an_upstream_call(
    traced_sidecar: Callable[..., Sidecar],
    receiver: OtlpReceiver,
    recorder: Recorder,
    client: aiohttp.ClientSession,
) -> None:
    sidecar = traced_sidecar()
    first, second = new_traceparent(), new_traceparent()
    assert await post_order(client, sidecar, first.traceparent) == 201
    assert await post_order(client, sidecar, second.traceparent) == 201

    await receiver.wait_for(
        lambda spans: (
            len(receiver.trace(first.trace_id)) >= 3 and len(receiver.trace(second.trace_id)) >= 2
        ),
        "both traces",
    )
    await asyncio.sleep(0.3)  # a client span of the replay would have arrived by now
    replay = receiver.trace(second.trace_id)
    assert sorted(s.kind for s in replay) == ["internal", "server"]
    decision = one(replay, name="idempotency")
    assert decision.attributes["idempotency.outcome"] == "hit"
    assert one(replay, kind="server").attributes["idempotency.outcome"] == "hit"
    original = one(receiver.trace(first.trace_id), name="idempotency")
    digest = decision.attributes["idempotency.key_digest"]
    assert digest == original.attributes["idempotency.key_digest"]
    assert len(recorder.to("/orders")) == 1


async def test_request_without_traceparent_starts_a_trace_the_app_continues(
    traced_sidecar: Callable[..., Sidecar],
    receiver: OtlpReceiver,
    recorder: Recorder,
    client: aiohttp.ClientSession,
) -> None:
    sidecar = traced_sidecar()
    async with client.get(f"{sidecar.url}/hello", headers={"User-Agent": "probe/1"}) as response:
        assert response.status == 200

    await receiver.wait_for(has("GET"), "the GET spans")
    server = one(receiver.spans, kind="server")
    upstream = one(receiver.spans, kind="client")
    assert server.parent_span_id == ""
    assert upstream.trace_id == server.trace_id
    assert upstream.parent_span_id == server.span_id  # no decision: GET is not covered
    assert server.attributes["idempotency.outcome"] == "bypass"
    assert server.attributes["user_agent.original"] == "probe/1"
    assert "http.route" not in server.attributes
    (call,) = recorder.to("/hello")
    assert names(call.headers["traceparent"], upstream)


async def test_spans_still_queued_at_shutdown_are_exported(
    traced_sidecar: Callable[..., Sidecar],
    receiver: OtlpReceiver,
    client: aiohttp.ClientSession,
) -> None:
    sidecar = traced_sidecar(env={"OTEL_BSP_SCHEDULE_DELAY": "60000"})
    incoming = new_traceparent()
    async with client.get(f"{sidecar.url}/late", headers={"traceparent": incoming.traceparent}):
        pass
    await asyncio.sleep(0.5)
    assert receiver.trace(incoming.trace_id) == []  # batched for a minute

    assert await asyncio.to_thread(sidecar.stop) == 0

    assert {s.kind for s in receiver.trace(incoming.trace_id)} == {"server", "client"}


async def test_collector_down_never_fails_a_request_and_is_logged_once(
    traced_sidecar: Callable[..., Sidecar], client: aiohttp.ClientSession
) -> None:
    nowhere = f"http://127.0.0.1:{find_free_port()}"
    sidecar = traced_sidecar({"tracing": {"endpoint": nowhere, "timeout": "1s"}})
    for number in range(12):
        async with client.get(f"{sidecar.url}/n/{number}") as response:
            assert response.status == 200
        await asyncio.sleep(0.1)  # several batches, each exported (and failing) on its own
    await asyncio.sleep(1.5)

    failing = [r for r in sidecar.log_records() if r.get("event") == "trace_export_failing"]
    assert len(failing) == 1, sidecar.log_text()
    assert nowhere in failing[0]["msg"]
    assert "Traceback" not in sidecar.log_text()


async def test_sampling_records_a_share_of_new_traces_and_follows_the_callers_decision(
    traced_sidecar: Callable[..., Sidecar],
    receiver: OtlpReceiver,
    recorder: Recorder,
    client: aiohttp.ClientSession,
) -> None:
    sidecar = traced_sidecar({"tracing": {"sample_ratio": 0}})
    sampled = new_traceparent()
    async with client.get(f"{sidecar.url}/new"):
        pass
    async with client.get(f"{sidecar.url}/sampled", headers={"traceparent": sampled.traceparent}):
        pass

    await receiver.wait_for(lambda spans: len(spans) >= 2, "the sampled request's spans")
    await asyncio.sleep(0.3)
    assert {s.trace_id for s in receiver.spans} == {sampled.trace_id}
    (unsampled,) = recorder.to("/new")
    version, trace_id, _, flags = unsampled.headers["traceparent"].split("-")
    assert int(flags, 16) & 1 == 0  # not recorded, yet the app can still join the trace
    assert (version, len(trace_id)) == ("00", 32)
    assert trace_id != sampled.trace_id
