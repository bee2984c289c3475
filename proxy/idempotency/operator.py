"""An operator releases one idempotency key: the admin route and the CLI share this.

The key is named the way a client sends it, never by its hash: the key itself, plus the value of
each configured scope header as the client sends it (none: the key as sent without scope
headers). ``forget_key`` derives the scoped lookup key exactly as the request path does and
deletes whatever the key holds: an in-flight lock, a "may have been sent" marker, or a stored
answer. A retry after that executes the request again.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.idempotency.keys import KeyScoper
from proxy.idempotency.store import IdempotencyStore

SCOPE_PREFIX = "X-Scope-"


def scope_headers(pairs: Iterable[tuple[str, str]]) -> CIMultiDictProxy[str]:
    """The scope headers named by ``(header, value)`` pairs, as a request would carry them."""
    return CIMultiDictProxy(CIMultiDict(pairs))


def scope_from_admin_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDictProxy[str]:
    """``X-Scope-<Header>: value`` headers of an admin call, as the scope headers they name."""
    return scope_headers(
        (name[len(SCOPE_PREFIX) :], value)
        for name, value in headers
        if name.lower().startswith(SCOPE_PREFIX.lower())
    )


async def forget_key(
    store: IdempotencyStore, scoper: KeyScoper, key: str, scope: CIMultiDictProxy[str]
) -> bool:
    """Delete what ``key`` (under ``scope``) holds; False when it held nothing.

    Raises:
        StoreUnavailable: the store could not answer.
    """
    return await store.forget(await scoper.lookup_key(scope, key))
