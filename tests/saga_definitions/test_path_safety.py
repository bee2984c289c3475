"""Call paths: substituted values are one encoded segment and never leave the service URL.

A value that would make a dot segment (``.`` or ``..`` once percent-decoded, as RFC 3986 and
WHATWG parsers decode ``%2E``) is refused: encoded or not, a server resolves it as a step up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from aiohttp import ClientSession, web
from hypothesis import given
from hypothesis import strategies as st

from saga_runner.caller import StepCaller, StepRequest
from saga_runner.errors import TemplateError, TemplateRoot
from saga_runner.template import RenderContext, StepResult, build_url, compile_path
from saga_runner.transport import AiohttpTransport

BASE = "http://127.0.0.1:3001"

INJECTIONS = [
    "../../admin",
    "...",
    "//evil.example/x",
    "http://evil/x",
    "https://evil.example:443/",
    "%2F%2Fevil",
    "%2E%2E",
    "%2e",
    ".%2e",
    "a\\..\\b",
    "a\nb",
    "a\r\nHost: evil",
    "?x=1",
    "#frag",
    "a/b",
    "@evil.example",
    " spaced ",
    "ünï",
]


def render_path(template: str, value: object) -> str:
    return compile_path(template).render_path(RenderContext(input={"v": value}))


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_values_stay_one_segment_on_the_service(value: str) -> None:
    path = render_path("/orders/{{ input.v }}/items", value)
    url = build_url(BASE, path)
    parts = urlsplit(str(url))
    assert (parts.scheme, parts.netloc) == ("http", "127.0.0.1:3001")
    assert (parts.query, parts.fragment) == ("", "")
    segments = parts.path.split("/")
    assert segments[:2] == ["", "orders"]
    assert segments[3:] == ["items"]
    assert segments[2] not in (".", "..")
    assert unquote(segments[2]) == value
    assert url.raw_path == parts.path


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("%2E%2E", "%252E%252E"),
        ("%2e.", "%252e."),
        ("...", "..."),
        ("//evil.example/x", "%2F%2Fevil.example%2Fx"),
        ("http://evil/x", "http%3A%2F%2Fevil%2Fx"),
        ("%2F%2F", "%252F%252F"),
        ("a\\b", "a%5Cb"),
        ("a\nb", "a%0Ab"),
        ("?x=1", "%3Fx%3D1"),
        ("#f", "%23f"),
        ("ord_7", "ord_7"),
        ("report.v2", "report.v2"),
        (42, "42"),
    ],
)
def test_values_are_percent_encoded_as_a_single_segment(value: object, segment: str) -> None:
    assert render_path("/orders/{{ input.v }}", value) == f"/orders/{segment}"


@pytest.mark.parametrize(("value", "kind"), [("", "empty"), (None, "null"), ({"a": 1}, "object")])
def test_values_that_cannot_be_a_segment_are_refused(value: object, kind: str) -> None:
    with pytest.raises(TemplateError, match=kind):
        render_path("/orders/{{ input.v }}", value)


def test_values_in_a_literal_query_are_encoded_too() -> None:
    path = render_path("/orders?no={{ input.v }}", "a&admin=1")
    assert path == "/orders?no=a%26admin%3D1"
    assert str(build_url(BASE, path)) == f"{BASE}{path}"


@pytest.mark.parametrize("value", [".", ".."])
@pytest.mark.parametrize(
    "template",
    ["/svc/{{ input.v }}/orders", "/svc/{{ input.v }}", "/svc/{{ input.v }}?at={{ input.v }}"],
)
def test_a_value_that_is_a_dot_segment_is_refused_as_the_triggers_fault(
    template: str, value: str
) -> None:
    with pytest.raises(TemplateError, match="dot segment") as caught:
        render_path(template, value)
    assert caught.value.root is TemplateRoot.INPUT and caught.value.from_trigger


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("/svc/.{{ input.v }}/orders", {"v": "."}),
        ("/svc/{{ input.v }}./orders", {"v": "."}),
        ("/svc/%2e{{ input.v }}/orders", {"v": "."}),
        ("/svc/{{ input.v }}%2E/orders", {"v": "."}),
        ("/svc/{{ input.a }}{{ input.b }}/orders", {"a": ".", "b": "."}),
    ],
)
def test_a_value_that_completes_a_dot_segment_with_the_literal_text_is_refused(
    template: str, values: dict[str, str]
) -> None:
    with pytest.raises(TemplateError, match="dot segment") as caught:
        compile_path(template).render_path(RenderContext(input=values))
    assert caught.value.root is TemplateRoot.INPUT


def test_a_dot_segment_from_a_steps_answer_is_not_the_triggers_fault() -> None:
    ctx = RenderContext(steps={"s": StepResult(200, {"id": ".."})})
    with pytest.raises(TemplateError, match="dot segment") as caught:
        compile_path("/orders/{{ steps.s.body.id }}").render_path(ctx)
    assert caught.value.root is TemplateRoot.STEPS and not caught.value.from_trigger


def test_dots_in_a_literal_query_are_not_segments() -> None:
    assert render_path("/orders?v={{ input.v }}", "..") == "/orders?v=.."


def test_base_url_path_prefix_is_kept() -> None:
    url = build_url("https://api.example:8443/v1", render_path("/orders/{{ input.v }}", "a.b"))
    assert str(url) == "https://api.example:8443/v1/orders/a.b"


@pytest.mark.parametrize(
    "path",
    ["orders", "//evil.example/x", "/a/../b", "/a/./b", "/a b", "/a#b", "/a\\b", "/a\nb",
     "/a/%2E%2E/b", "/a/%2e%2e", "/a/.%2e/b", "/a/%2e./b", "/a/%2E/b", "/a/%2e"],
)  # fmt: skip
def test_build_url_refuses_paths_that_would_leave_the_service(path: str) -> None:
    with pytest.raises(TemplateError):
        build_url("http://127.0.0.1:3001/prefix", path)


def test_build_url_refuses_a_service_prefix_with_an_encoded_dot_segment() -> None:
    with pytest.raises(TemplateError):
        build_url("http://127.0.0.1:3001/a/%2e%2e/b", "/orders")


@pytest.mark.parametrize("base", ["ftp://h/x", "http://h/x?q=1", "http://h#f", "/relative"])
def test_build_url_refuses_bad_service_urls(base: str) -> None:
    with pytest.raises(TemplateError, match="must be http"):
        build_url(base, "/orders")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("orders", "must start with a single '/'"),
        ("{{ input.v }}/x", "must start with a single '/'"),
        ("//{{ input.v }}", "must start with a single '/'"),
        ("/a/../b", "'.' or '..' segments"),
        ("/a/./{{ input.v }}", "'.' or '..' segments"),
        ("/a/%2E%2e/b", "'.' or '..' segments"),
        ("/a/%2e/{{ input.v }}", "'.' or '..' segments"),
        ("/a b", "printable ASCII"),
        ("/a#b", "printable ASCII"),
        ("/a\\b", "printable ASCII"),
        ("/caf\u00e9", "printable ASCII"),
    ],
)
def test_unsafe_literal_paths_are_refused_at_load(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_path(template)


@given(st.text(min_size=1).filter(lambda v: v not in (".", "..")))
def test_any_value_stays_one_segment(value: str) -> None:
    url = build_url(BASE, render_path("/orders/{{ input.v }}", value))
    parts = urlsplit(str(url))
    assert parts.netloc == "127.0.0.1:3001"
    assert (parts.query, parts.fragment) == ("", "")
    _, orders, segment = parts.path.split("/")
    assert orders == "orders"
    assert unquote(segment) == value
    assert unquote(segment) not in (".", "..")


async def test_aiohttp_sends_the_encoded_segment_verbatim(
    upstream_server: Callable[..., Awaitable[Any]],
) -> None:
    seen: list[tuple[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.raw_path, request.match_info["id"]))
        return web.Response()

    app = web.Application()
    app.router.add_delete("/orders/{id}", handler)
    upstream = await upstream_server(app)
    url = build_url(upstream.url, render_path("/orders/{{ input.v }}", "%2E%2E"))
    async with ClientSession() as session, session.delete(url) as response:
        assert response.status == 200
    assert seen == [("/orders/%252E%252E", "%2E%2E")]


async def test_step_caller_sends_a_built_url_without_re_normalising_it(
    upstream_server: Callable[..., Awaitable[Any]],
) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    upstream = await upstream_server(app)
    url = build_url(upstream.url, render_path("/orders/{{ input.v }}", "%2E%2E"))
    transport = AiohttpTransport()
    try:
        result = await StepCaller(transport).call(
            StepRequest(method="DELETE", url=str(url)), success=None, seconds=5
        )
    finally:
        await transport.close()
    assert result.status == 200
    assert seen == ["/orders/%252E%252E"]
