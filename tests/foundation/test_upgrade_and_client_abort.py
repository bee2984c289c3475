"""An upstream ``101`` and a client that leaves mid-body: each a clear answer and one log line,
never a traceback.

The sidecar relays no protocol upgrade: an app's ``101 Switching Protocols`` is answered 502
(problem+json) with a warning saying so. A client that disconnects while sending its body is a
client abort: status 499 in the access line, no error logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from foundation.rawserver import Peer, StartServer, response

if TYPE_CHECKING:
    from conftest import Sidecar


async def upgrading(peer: Peer) -> None:
    """Answer every request with a 101, as an app offering a WebSocket would."""
    if await peer.request() is not None:
        await peer.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await asyncio.sleep(0.5)


async def body_reader(peer: Peer) -> None:
    """Read whole requests and answer 200 (a body the client abandons never ends)."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while await peer.request() is not None:
            await peer.send(response("200 OK", b"ok"))


def _tracebacks(sidecar: Sidecar) -> list[dict[str, Any]]:
    return [r for r in sidecar.log_records() if "exc" in r or "Traceback" in str(r)]


async def _access(sidecar: Sidecar, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for record in sidecar.log_records():
            if record.get("path") == path and "status" in record:
                return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no access line for {path}: {sidecar.log_text()}")


async def test_an_upstream_101_is_a_502_problem_without_a_traceback(
    raw_server: StartServer, sidecar_process: Callable[..., Sidecar]
) -> None:
    server = await raw_server(upgrading)
    sidecar = sidecar_process({"upstream": {"url": server.url}})
    async with aiohttp.ClientSession() as http:
        headers = {"Upgrade": "websocket", "Connection": "Upgrade"}
        async with http.get(f"{sidecar.url}/socket", headers=headers) as answer:
            assert answer.status == 502
            assert answer.content_type == "application/problem+json"
            assert "101" in (await answer.json())["detail"]
    assert (await _access(sidecar, "/socket"))["status"] == 502
    assert any("101" in r.get("msg", "") for r in sidecar.log_records() if r.get("level"))
    assert not _tracebacks(sidecar), "\n".join(
        str(r.get("msg")) + str(r.get("exc")) for r in _tracebacks(sidecar)
    )


async def test_a_client_leaving_mid_body_is_logged_as_a_499_client_abort(
    raw_server: StartServer, sidecar_process: Callable[..., Sidecar]
) -> None:
    server = await raw_server(body_reader)
    sidecar = sidecar_process({"upstream": {"url": server.url}})
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 100_000
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    record = await _access(sidecar, "/upload")
    assert record["status"] == 499, sidecar.log_text()[-3000:]
    assert not _tracebacks(sidecar), "\n".join(
        str(r.get("msg")) + str(r.get("exc")) for r in _tracebacks(sidecar)
    )
    assert not [r for r in sidecar.log_records() if r.get("level") in ("error", "ERROR")]
    del reader
