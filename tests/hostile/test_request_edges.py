"""Request paths and headers a hostile client shapes, against one real sidecar process.

The sidecar fronts a ``RawRecorder`` under the prefix ``/svc`` (``upstream.url`` ends in
``/svc``), writes text logs, and requires an idempotency key on ``/charges``. Covered here:
dot segments in any spelling must not leave ``/svc``; ``require_key`` must hold for every
spelling of ``/charges``; control characters must not forge text log lines; forwarded headers a
client sent must not reach the app unless ``trust_forwarded`` says so.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from conftest import Sidecar, Upstream
from foundation.rawhttp import Connection, RawResponse

from proxy.errors import PathEscape
from proxy.paths import resolve_dots, route_key, route_pattern


@dataclass(frozen=True)
class Seen:
    """One request as the app received it."""

    method: str
    raw_path: str
    headers: dict[str, list[str]]


class RawRecorder:
    """Records the raw target and headers of every request; answers 200."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        """The application to serve."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def marked(self, mark: str) -> list[Seen]:
        """The requests whose raw target contains ``mark``."""
        with self._lock:
            return [seen for seen in self.seen if mark in seen.raw_path]

    def with_header(self, name: str, value: str) -> list[Seen]:
        """The requests that carried ``name: value``."""
        with self._lock:
            return [seen for seen in self.seen if value in seen.headers.get(name.lower(), [])]

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        with self._lock:
            self.seen.append(Seen(request.method, request.raw_path, headers))
        return web.json_response({"ok": True})


@pytest.fixture(scope="module")
def recorder(app_in_thread: Callable[..., Upstream]) -> Iterator[tuple[RawRecorder, str]]:
    """The recording app, served from the background thread."""
    rec = RawRecorder()
    upstream = app_in_thread(rec.app())
    yield rec, upstream.url
    upstream.stop()


@pytest.fixture(scope="module")
def edge_sidecar(
    module_sidecar_process: Callable[..., Sidecar], recorder: tuple[RawRecorder, str]
) -> Sidecar:
    """The sidecar in front of ``recorder`` under ``/svc``, with text logs."""
    return module_sidecar_process(
        {
            "upstream": {"url": f"{recorder[1]}/svc"},
            "log": {"format": "text"},
            "idempotency": {
                "store": "memory://",
                "routes": [{"path": "/charges", "require_key": True}],
            },
        }
    )


async def exchange(sidecar: Sidecar, head: bytes, body: bytes = b"") -> RawResponse:
    """Send one raw request and read its answer."""
    connection = await Connection.open(sidecar.url)
    try:
        await connection.send(head + body)
        return await connection.response()
    finally:
        await connection.close()


def request_head(method: str, target: str, *extra: str, length: int | None = None) -> bytes:
    """A raw HTTP/1.1 request head."""
    lines = [f"{method} {target} HTTP/1.1", "Host: sidecar", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- finding 2 (proxy half): dot segments never leave the upstream prefix -----------------------

CLIMBING = [
    "/../{m}",
    "/%2e%2e/{m}",
    "/%2E%2E/{m}",
    "/%2E./{m}",
    "/.%2e/{m}",
    "/x/../../{m}",
    "/x/%2e%2e/%2e%2e/{m}",
    "/..;/{m}",
    "/..",
    "/x/../..?{m}",
]


@pytest.mark.parametrize("template", CLIMBING)
async def test_a_dot_segment_climbing_above_the_root_is_refused(
    edge_sidecar: Sidecar, recorder: tuple[RawRecorder, str], template: str
) -> None:
    mark = f"admin-{uuid.uuid4().hex}"
    response = await exchange(edge_sidecar, request_head("GET", template.format(m=mark)))
    assert response.status == 400
    assert "climbs above the root" in response.problem()["detail"]
    assert recorder[0].marked(mark) == []


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/a/../{m}", "/svc/{m}"),
        ("/a/%2e%2E/{m}?q=1", "/svc/{m}?q=1"),
        ("/./{m}/.", "/svc/{m}/"),
        ("/{m}/%41/..", "/svc/{m}/"),
        ("/{m}/file.json", "/svc/{m}/file.json"),
        ("/{m}/..x/.hidden", "/svc/{m}/..x/.hidden"),
    ],
)
async def test_dot_segments_within_the_prefix_reach_the_app_resolved(
    edge_sidecar: Sidecar, recorder: tuple[RawRecorder, str], template: str, expected: str
) -> None:
    mark = f"p-{uuid.uuid4().hex}"
    response = await exchange(edge_sidecar, request_head("GET", template.format(m=mark)))
    assert response.status == 200
    assert [seen.raw_path for seen in recorder[0].marked(mark)] == [expected.format(m=mark)]


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/..;x=1/b", "/b"),
        ("/a/.../b", "/a/.../b"),
        ("/a/%2e%2e%2fb", "/a/%2e%2e%2fb"),
    ],
)
def test_resolve_dots(path: str, resolved: str) -> None:
    assert resolve_dots(path) == resolved


def test_resolve_dots_refuses_an_escape() -> None:
    with pytest.raises(PathEscape):
        resolve_dots("/a/../../b")


# -- finding 9: require_key holds for every spelling of a route ---------------------------------

CHARGES_VARIANTS = [
    "/charges",
    "/charges/",
    "//charges",
    "/CHARGES",
    "/Charges/",
    "/./charges",
    "/x/../charges",
    "/%2e/charges",
    "/%63harges",
    "/charges;v=1",
    "/charges?x=1",
]


@pytest.mark.parametrize("path", CHARGES_VARIANTS)
async def test_require_key_holds_for_every_spelling_of_the_route(
    edge_sidecar: Sidecar, recorder: tuple[RawRecorder, str], path: str
) -> None:
    mark = uuid.uuid4().hex
    head = request_head("POST", path, f"X-Mark: {mark}", length=2)
    response = await exchange(edge_sidecar, head, b"{}")
    assert response.status == 400
    assert response.problem()["title"] == "Idempotency key required"
    assert recorder[0].with_header("X-Mark", mark) == []


async def test_other_routes_still_pass_without_a_key(
    edge_sidecar: Sidecar, recorder: tuple[RawRecorder, str]
) -> None:
    mark = uuid.uuid4().hex
    response = await exchange(edge_sidecar, request_head("POST", f"/refunds/{mark}", length=0))
    assert response.status == 200
    assert len(recorder[0].marked(mark)) == 1


@pytest.mark.parametrize(
    ("target", "key"),
    [
        ("//API/./v1/%70ayments/;v=2?q=1", "/api/v1/payments"),
        ("/a%2Fb", "/a/b"),
        ("/../../x", "/"),
    ],
)
def test_route_key(target: str, key: str) -> None:
    assert route_key(target) == key


def test_route_pattern_is_lower_case_without_empty_segments() -> None:
    assert route_pattern("/Api//V1/*/") == "/api/v1/*"


# -- finding 7: control characters never forge a text log line ----------------------------------


async def test_control_characters_in_a_path_are_escaped_in_text_logs(
    edge_sidecar: Sidecar,
) -> None:
    mark = uuid.uuid4().hex
    forged = f"2026-01-01 00:00:00,000 INFO saga_sidecar.access FORGED-{mark}"
    target = f"/log/{mark}%0d%0a{forged.replace(' ', '%20')}%1b[31mred%00nul%c2%85nel"
    before = len(edge_sidecar.log_text())
    await exchange(edge_sidecar, request_head("GET", target))
    await asyncio.sleep(0.2)
    logged = edge_sidecar.log_text()[before:]
    lines = [line for line in logged.splitlines() if mark in line]
    assert len(lines) == 1, logged  # a forged line would be a second one holding the mark
    line = lines[0]
    assert "\\r\\n" in line and "\\x1b[31m" in line and "\\x00" in line and "\\x85" in line
    assert not any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in line)


# -- finding 8: forwarded headers are the sidecar's own unless trusted --------------------------

SPOOFED = (
    "X-Forwarded-For: 6.6.6.6",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: bank.example",
    "X-Real-IP: 6.6.6.6",
    "Forwarded: for=6.6.6.6;proto=https;host=bank.example",
)


async def test_forwarded_headers_from_the_client_never_reach_the_app(
    edge_sidecar: Sidecar, recorder: tuple[RawRecorder, str]
) -> None:
    mark = uuid.uuid4().hex
    response = await exchange(edge_sidecar, request_head("GET", f"/fwd/{mark}", *SPOOFED))
    assert response.status == 200
    [seen] = recorder[0].marked(mark)
    assert seen.headers["x-forwarded-for"] == ["127.0.0.1"]
    assert seen.headers["x-forwarded-proto"] == ["http"]
    assert seen.headers["x-forwarded-host"] == ["sidecar"]
    assert "x-real-ip" not in seen.headers
    assert "forwarded" not in seen.headers


async def test_trusted_forwarded_headers_are_appended_to(
    sidecar_process: Callable[..., Sidecar], recorder: tuple[RawRecorder, str]
) -> None:
    sidecar = sidecar_process({"upstream": {"url": recorder[1]}, "trust_forwarded": True})
    mark = uuid.uuid4().hex
    response = await exchange(sidecar, request_head("GET", f"/fwd/{mark}", *SPOOFED))
    assert response.status == 200
    [seen] = recorder[0].marked(mark)
    assert seen.headers["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]
    assert seen.headers["x-forwarded-proto"] == ["https"]
    assert seen.headers["x-forwarded-host"] == ["bank.example"]
    assert seen.headers["x-real-ip"] == ["6.6.6.6"]
    assert seen.headers["forwarded"] == [
        "for=6.6.6.6;proto=https;host=bank.example, for=127.0.0.1;proto=http;host=sidecar"
    ]
