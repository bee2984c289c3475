"""How step calls reach a service: the ``StepTransport`` protocol and its aiohttp implementation.

``StepCaller`` renders and classifies; a transport only moves bytes. ``exchange`` sends one
request and returns the status, headers and at most ``limit`` bytes of the (content-decoded)
body, all within ``seconds`` in total. It raises ``TimeoutError`` when that time ran
out, and ``SendFailure`` for any other trouble, saying whether request bytes may have reached
the service. The proxy injects a transport over its own HTTP client; ``AiohttpTransport`` serves
every other caller (the CLI, tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp.connector import Connection
from multidict import MultiMapping
from yarl import URL

from saga_runner.errors import SendFailure

# Answers without a body by definition, after which an app may still send bytes.
_BODILESS_STATUSES = frozenset({204, 304})


@dataclass(frozen=True)
class RawAnswer:
    """A service's answer: status, headers as received, and the (possibly cut) body."""

    status: int
    headers: MultiMapping[str]
    body: bytes


class StepTransport(Protocol):
    """Sends step calls; see the module docstring for the contract."""

    async def exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        seconds: float,
        limit: int,
    ) -> RawAnswer:
        """Send one request (``url`` is sent as is, never re-normalised); read the answer.

        Raises:
            TimeoutError: ``seconds`` passed before the answer was read.
            SendFailure: no answer, for any other reason.
        """
        ...

    async def close(self) -> None:
        """Close the connections this transport keeps."""
        ...


async def read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to ``limit`` bytes, however many pieces it arrives in.

    (``StreamReader.read(n)`` returns only what is buffered so far: a body sent in two pieces
    would be cut after the first.)
    """
    buffer = bytearray()
    async for chunk in content.iter_any():
        buffer += chunk
        if len(buffer) >= limit:
            break
    return bytes(buffer[:limit])


class _BodilessAnswerClosesResponse(aiohttp.ClientResponse):
    """A response that closes its connection when the answer has no body (HEAD, 204, 304).

    aiohttp pools such a connection as soon as the head is parsed; an app that sends a body
    anyway, now or later, would have those bytes read as the next request's answer. The
    connection is closed right after ``start`` pooled it, before anything else can take it.
    """

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        await super().start(connection)
        if protocol is not None and (self.method == "HEAD" or self.status in _BODILESS_STATUSES):
            protocol.close()
        return self


class AiohttpTransport:
    """Step calls over an aiohttp ``ClientSession`` of its own."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=30),
            response_class=_BodilessAnswerClosesResponse,
        )

    async def exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        seconds: float,
        limit: int,
    ) -> RawAnswer:
        """See ``StepTransport.exchange``."""
        try:
            async with self.session.request(
                method,
                # encoded=True: yarl would otherwise decode %2E%2E and drop the dot segment.
                URL(url, encoded=True),
                headers=dict(headers),
                data=body,
                timeout=aiohttp.ClientTimeout(total=seconds),
                allow_redirects=False,
            ) as response:
                raw = await read_bounded(response.content, limit)
                return RawAnswer(response.status, response.headers, raw)
        except aiohttp.ClientConnectorError as exc:
            raise SendFailure(str(exc.os_error or exc), sent=False) from exc
        except TimeoutError:
            raise
        except (aiohttp.ClientError, OSError) as exc:
            raise SendFailure(repr(exc), sent=True) from exc

    async def close(self) -> None:
        """Close the session."""
        await self.session.close()
