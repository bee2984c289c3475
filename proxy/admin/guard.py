"""Browser defences of the admin listener: no cross-site requests, no DNS rebinding.

Without ``admin.token`` the admin API trusts whoever reaches its address, and a page open in an
operator's browser can: a cross-site form POST (``text/plain``, form-encoded or multipart) needs
no CORS preflight, and a DNS-rebinding page talks to 127.0.0.1 under its own host name, as its
own origin. ``admin_guard_middleware`` refuses, in this order:

- ``421`` a ``Host`` that is neither a loopback name (``localhost``, ``*.localhost``), an IP
  address, nor listed in ``admin.allowed_hosts``, when no token is configured (with a token the
  page cannot authenticate, whatever name it uses; a rebinding page always uses a name);
- ``403`` a state-changing request (any method but GET, HEAD, OPTIONS) that a browser marks as
  cross-site: ``Sec-Fetch-Site`` other than ``same-origin``/``none``, or an ``Origin`` that is not
  the listener's own;
- ``415`` a POST, PUT or PATCH whose ``Content-Type`` is not ``application/json``: no HTML form
  can send it, and a page that tries from another origin must first pass a CORS preflight, which
  this listener never grants.

Clients outside a browser (curl, scripts) send neither ``Origin`` nor ``Sec-Fetch-Site``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.keys import CONFIG
from proxy.problems import problem_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})


def host_name(host: str) -> str:
    """The name part of a ``Host`` header value (no port, no IPv6 brackets), lower-case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether a request with this ``Host`` may be served without a token."""
    name = host_name(host).rstrip(".")
    if name == "localhost" or name.endswith(".localhost") or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True  # an address literal: a rebinding page always names its own host


def cross_site(request: web.Request) -> bool:
    """Whether a browser marked ``request`` as sent from another site or origin."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.strip().lower() not in SAME_ORIGIN_FETCH:
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    own = f"{request.scheme}://{request.headers.get('Host', '')}"
    return origin.strip().lower() != own.lower()


def refusal(request: web.Request) -> web.Response | None:
    """The problem refusing ``request``, or None when it may go on."""
    admin = request.app[CONFIG].config.admin
    host = request.headers.get("Host")
    if not admin.token and host is not None and not host_allowed(host, admin.allowed_hosts):
        return problem_response(
            421,
            "this admin listener does not serve that host name: use localhost or an address, "
            "or list the name in admin.allowed_hosts",
        )
    if request.method in SAFE_METHODS or request.match_info.http_exception is not None:
        return None  # a read, or no such route (the router's 404/405 answers it)
    if cross_site(request):
        return problem_response(403, "cross-site requests to the admin API are refused")
    if request.method in BODY_METHODS and request.content_type != "application/json":
        return problem_response(415, "send the request with 'Content-Type: application/json'")
    return None


@web.middleware
async def admin_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse admin requests a web page could have made on an operator's behalf."""
    refused = refusal(request)
    if refused is not None:
        return refused
    return await handler(request)
