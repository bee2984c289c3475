"""Exceptions raised by the proxy package (the saga runner's are in ``saga_runner.errors``, a bad
YAML file is ``yamlconfig.ConfigError``).

Exception tree::

    SidecarError                     root of everything the proxy raises on purpose
    ├── UpstreamError                the upstream call failed; ``sent``: whether the request
    │   │                            went out
    │   ├── UpstreamUnreachable      connection refused / DNS / pool: nothing was sent (→ 502)
    │   ├── UpstreamReset            connection dropped after the request was sent (→ 502)
    │   ├── UpstreamUpgrade          the app answered 101 Switching Protocols: not relayed (→ 502)
    │   ├── UpstreamBusy             no connection to the app free within ``upstream.pool_timeout``,
    │   │                            or the client holds ``max_connections_per_client`` (→ 503)
    │   └── UpstreamTimeout          no answer (or no next chunk) in ``upstream.timeout`` (→ 504)
    ├── UpstreamConnectionError      one pooled connection broke or its answer was not valid
    │                                HTTP/1.1 (also a ``ConnectionError``; the client reports it
    │                                as an ``UpstreamError``)
    ├── RequestHeadTimeout           the request head did not arrive in the read timeout (→ 408)
    ├── RequestBodyError             the client's request body cannot be accepted
    │   ├── RequestBodyTooLarge      the request body exceeds a configured limit (→ 413)
    │   ├── RequestBodyTimeout       the client paused longer than ``limits.read_timeout`` (→ 408)
    │   └── ClientAborted            the client closed its connection mid-body (499, access log)
    ├── PathEscape                   the request path climbs above the root with a dot segment in
    │                                some spelling (``/../x``, ``/%2e%2e/x``) (→ 400)
    ├── InvalidKey                   a malformed, repeated or oversized Idempotency-Key (→ 400;
    │                                also a ``ValueError``)
    ├── BadTrigger                   a saga trigger's body is not a JSON object it can store (→ 400)
    ├── BadCallback                  an awaiting step's callback body is not the JSON object
    │                                ``{"outcome", "result"}`` it can store; ``reason`` labels the
    │                                metric (→ 400)
    ├── StoreUnavailable             the idempotency store could not be used (→ 503)
    │   └── StoreFull                the in-process store reached its memory bound
    ├── RecordFormatError            stored bytes that are not a record this version reads (also a
    │                                ``ValueError``; the store reports it as ``StoreUnavailable``)
    ├── RespError                    Redis answered a pipelined command with an error reply (the
    │                                store reports it as ``StoreUnavailable``)
    └── RuntimeUnavailable           the saga runtime, or the task scheduler operator actions run
                                     on, is not running in this process (→ 503 on the admin API)
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


class UpstreamUpgrade(UpstreamError):
    """The app answered 101 Switching Protocols; the sidecar relays no protocol upgrade."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, sent=True)


class UpstreamBusy(UpstreamError):
    """No connection to the app could be had in time; the request was not sent."""

    status = 503
    title = "Service Unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, sent=False)


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured timeout."""

    status = 504
    title = "Gateway Timeout"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, sent=True)


class UpstreamConnectionError(SidecarError, ConnectionError):
    """The upstream connection broke, or its answer was not valid HTTP/1.1."""


class RequestHeadTimeout(SidecarError):
    """The request head was not received within the read timeout."""


class RequestBodyError(SidecarError):
    """The client's request body cannot be accepted; ``status`` is the answer to give."""

    status = 400
    title: str | None = None


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


class ClientAborted(RequestBodyError):
    """The client closed its connection before sending its whole body (nginx's 499)."""

    status = 499
    title = "Client Closed Request"

    def __init__(self) -> None:
        super().__init__("the client closed the connection before sending its whole body")


class PathEscape(SidecarError):
    """A ``..`` segment of the request path (in any spelling) climbs above the root (→ 400)."""

    status = 400


class InvalidKey(SidecarError, ValueError):
    """The idempotency key header is malformed, repeated, or out of bounds (→ 400)."""


class BadTrigger(SidecarError):
    """The trigger request cannot start a saga (its body is not a JSON object)."""


class BadCallback(SidecarError):
    """The callback's body is not ``{"outcome": …, "result": …}`` JSON every store can keep.

    Attributes:
        reason: ``bad_json`` (not JSON, or JSON no store keeps) or ``bad_body`` (JSON of another
            shape): the ``reason`` of ``saga_callback_rejected_total``.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreUnavailable(SidecarError):
    """The idempotency store could not be used (unreachable, timed out, full, corrupt data)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class StoreFull(StoreUnavailable):
    """An in-process store reached its memory bound; nothing within its TTL is dropped early."""


class RecordFormatError(SidecarError, ValueError):
    """Bytes in the store that are not a record this version can read."""


class RespError(SidecarError):
    """Redis answered a command with an error reply."""


class RuntimeUnavailable(SidecarError):
    """The saga runtime (or the scheduler operator runs need) is not running in this process."""
