"""The pure pieces of trace propagation: which trace context a call carries, where spans go."""

from __future__ import annotations

from proxy.headers import forwarded_header_lines
from proxy.tracing.export import traces_url
from saga_runner.caller import StepRequest
from saga_runner.tracing import carrying, recorded_trace

CLIENTS = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OURS = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"


def test_untraced_lines_keep_the_clients_trace_context_byte_for_byte() -> None:
    raw = ((b"Traceparent", CLIENTS.encode()), (b"tracestate", b"a=1"))
    lines = forwarded_header_lines(raw, client_ip=None, proto="http", request_id=None)
    assert b"Traceparent: " + CLIENTS.encode() + b"\r\n" in lines
    assert b"tracestate: a=1\r\n" in lines


def test_traced_lines_replace_the_clients_trace_context_in_any_case() -> None:
    raw = ((b"TRACEPARENT", CLIENTS.encode()), (b"TraceState", b"a=1"), (b"X-Kept", b"yes"))
    ours = f"traceparent: {OURS}\r\n".encode()
    lines = forwarded_header_lines(raw, client_ip=None, proto="http", request_id=None, trace=ours)
    assert CLIENTS.encode() not in lines
    assert b"a=1" not in lines
    assert lines.count(b"traceparent") == 1 and lines.endswith(ours)
    assert b"X-Kept: yes\r\n" in lines


def test_a_step_call_carries_its_spans_trace_context_instead_of_the_triggers() -> None:
    request = StepRequest("POST", "http://svc/x", {"Traceparent": CLIENTS, "tracestate": "a=1"})
    assert carrying(request, {}) is request
    carried = carrying(request, {"traceparent": OURS})
    assert carried.headers == {"traceparent": OURS}
    assert request.headers["Traceparent"] == CLIENTS  # the rendered call is left as it was


def test_recorded_trace_reads_only_the_trace_context_of_a_started_event() -> None:
    detail = {"headers": {"traceparent": CLIENTS}, "trace": {"traceparent": OURS, "other": "x"}}
    assert recorded_trace(detail) == {"traceparent": OURS}
    assert recorded_trace({"headers": {}}) == {}
    assert recorded_trace(None) == {}


def test_spans_go_to_v1_traces_unless_the_endpoint_has_a_path() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("https://otel.example/custom/traces") == "https://otel.example/custom/traces"
