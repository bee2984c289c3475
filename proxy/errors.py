"""Exceptions raised by the proxy package.

Exception tree::

    SidecarError                 root of everything the proxy raises on purpose
    ├── UpstreamError            the upstream call failed; ``sent``: whether the request went out
    │   ├── UpstreamUnreachable  connection refused / DNS / pool: nothing was sent (→ 502)
    │   ├── UpstreamReset        connection dropped after the request was sent (→ 502)
    │   └── UpstreamTimeout      no answer (or no next chunk) within ``upstream.timeout`` (→ 504)
    └── RequestBodyError         the client's request body cannot be accepted
        ├── RequestBodyTooLarge  the request body exceeds a configured limit (→ 413)
        └── RequestBodyTimeout   the client paused longer than ``limits.read_timeout`` (→ 408)
"""

from __future__ import annotations


class SidecarError(Exception):
    """Root of every exception the proxy raises on purpose."""


class UpstreamError(SidecarError):
    """The upstream call failed; ``sent`` tells whether the request may have reached the app."""

    status = 502
    title = "Bad Gateway"

    def __init__(self, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.sent = sent


class UpstreamUnreachable(UpstreamError):
    """The upstream could not be connected to; the request was not sent."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, sent=False)


class UpstreamReset(UpstreamError):
    """The upstream closed the connection after the request was sent."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, sent=True)


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured timeout."""

    status = 504
    title = "Gateway Timeout"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, sent=True)


class RequestBodyError(SidecarError):
    """The client's request body cannot be accepted; ``status`` is the answer to give."""

    status = 400


class RequestBodyTooLarge(RequestBodyError):
    """The request body is larger than the configured limit."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


class RequestBodyTimeout(RequestBodyError):
    """The client sent no body bytes for longer than the read timeout."""

    status = 408

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no request body data received for {timeout:g}s")
        self.timeout = timeout
