"""The aiohttp internals ``proxy.aiohttp_internals`` leans on still exist and still work.

aiohttp is pinned to the minor version these tests ran against; an upgrade that renames or
reshapes a private attribute, record or method fails here by name instead of as a late head
that is never answered or a local handler that cannot read its body.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_protocol import _ErrInfo
from aiohttp.web_request import BaseRequest

from proxy import aiohttp_internals as internals

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def slots(cls: type) -> set[str]:
    """Every ``__slots__`` name of ``cls`` and its bases."""
    return {name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())}


async def ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


def test_installed_aiohttp_is_the_minor_version_pinned_in_pyproject() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [spec for spec in dependencies if re.match(r"aiohttp\b", spec)]
    match = re.fullmatch(r"aiohttp>=(\d+)\.(\d+),<(\d+)\.(\d+)", pin)
    assert match, f"aiohttp must be pinned to one minor version, not {pin!r}"
    major, minor, upper_major, upper_minor = map(int, match.groups())
    assert (upper_major, upper_minor) == (major, minor + 1), pin
    assert aiohttp.__version__.startswith(f"{major}.{minor}."), aiohttp.__version__


def test_the_request_handler_keeps_every_attribute_read_or_written() -> None:
    missing = set(internals.HANDLER_ATTRIBUTES) - slots(web.RequestHandler)
    assert not missing, f"aiohttp's RequestHandler lost {sorted(missing)}"
    assert "max_field_size" in slots(web.RequestHandler)


def test_the_error_record_is_built_from_status_exc_and_message() -> None:
    exc = TimeoutError("late")
    record = _ErrInfo(status=408, exc=exc, message="late")
    assert (record.status, record.exc, record.message) == (408, exc, "late")


def test_overridden_handler_methods_keep_their_signatures() -> None:
    assert list(inspect.signature(web.RequestHandler.handle_error).parameters) == [
        "self",
        "request",
        "status",
        "exc",
        "message",
    ]
    for name in ("connection_made", "connection_lost", "data_received"):
        assert len(inspect.signature(getattr(web.RequestHandler, name)).parameters) == 2, name
    parameters = inspect.signature(web.RequestHandler.__init__).parameters
    assert {"manager", "loop"} <= set(parameters)


def test_the_server_is_rebuilt_from_what_it_was_built_with() -> None:
    parameters = inspect.signature(web.Server.__init__).parameters
    assert {"handler", "request_factory", "handler_cancellation", "loop", "kwargs"} <= set(
        parameters
    )
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    assert list(inspect.signature(web.AppRunner._make_server).parameters) == ["self"]


async def test_a_queued_error_is_seen_by_the_request_loop() -> None:
    server = web.Server(ok, max_field_size=1234)
    handler = server()
    assert internals.handler_options(server) == {"max_field_size": 1234}
    assert handler.max_field_size == 1234
    assert internals.queued_messages(handler) == 0
    assert internals.expects_head(handler)
    assert internals.is_closing(handler)  # no transport yet
    assert not internals.is_busy(handler)
    waiter = internals.server_loop(server).create_future()
    handler._waiter = waiter

    internals.queue_error(handler, 408, TimeoutError("late head"))

    assert waiter.done()
    assert internals.queued_messages(handler) == 1 and internals.is_busy(handler)
    assert internals.last_queued_payload(handler) is EMPTY_PAYLOAD
    record = handler._messages[-1][0]
    assert isinstance(record, _ErrInfo)
    assert (record.status, record.message) == (408, "late head")


async def test_a_custom_runner_serves_the_server_it_customizes() -> None:
    chosen: list[web.Server] = []

    class Runner(internals.CustomServerRunner):
        def customize_server(self, plain: web.Server) -> web.Server:
            rebuilt = web.Server(
                plain.request_handler,
                request_factory=plain.request_factory,
                loop=internals.server_loop(plain),
                **internals.handler_options(plain),
            )
            chosen.append(rebuilt)
            return rebuilt

    runner = Runner(web.Application(), max_field_size=4321, access_log=None)
    await runner.setup()
    try:
        assert runner.server is chosen[0]
        assert internals.handler_options(chosen[0])["max_field_size"] == 4321
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("read", ["read", "text", "json"])
async def test_a_body_read_already_is_what_the_handler_reads(read: str) -> None:
    assert "_read_bytes" in BaseRequest.ATTRS
    request = make_mocked_request("POST", "/", headers={"Content-Type": "application/json"})

    internals.keep_read_body(request, b'{"a": 1}')

    got = await getattr(request, read)()
    assert got == {"read": b'{"a": 1}', "text": '{"a": 1}', "json": {"a": 1}}[read]
