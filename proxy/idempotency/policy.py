"""Which requests are covered, with which settings, and which answers are kept for replay.

``IdempotencyPolicy.for_request`` resolves ``idempotency.routes`` (first match wins, ``*`` globs,
matched on the normalised path of ``proxy.paths.route_key``)
over the section's defaults into the ``RoutePolicy`` of one request, or None when the request is
not covered (method not listed, or its route disabled). ``keeps_answer`` is the table of
docs/IDEMPOTENCY.md: what is stored and what releases the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from httpsemantics import NOT_PROCESSED, outcome_unknown
from proxy.config import IdempotencyConfig, IdempotencyRoute
from proxy.paths import route_key, route_matches, route_pattern


@dataclass(frozen=True)
class RoutePolicy:
    """The effective idempotency settings of one covered request."""

    require_key: bool
    ttl: float
    unknown_outcome: str
    concurrent: str


def keeps_answer(status: int, unknown_outcome: str) -> bool:
    """Whether a final answer with ``status`` is stored (True) or releases the key (False).

    2xx-5xx are stored, except 408/425/429/503 (not processed). Other 5xx may or may not have
    taken effect: kept with ``unknown_outcome: hold``, released with ``release``.
    """
    if status in NOT_PROCESSED:
        return False
    if outcome_unknown(status):
        return unknown_outcome == "hold"
    return True


class IdempotencyPolicy:
    """Resolves per-route overrides of one ``idempotency`` config section."""

    def __init__(self, config: IdempotencyConfig) -> None:
        self.methods = frozenset(config.methods)
        self.default = RoutePolicy(
            require_key=config.require_key,
            ttl=config.ttl,
            unknown_outcome=config.unknown_outcome,
            concurrent=config.concurrent,
        )
        self.routes = tuple(
            (route_pattern(route.path), self._merge(route)) for route in config.routes
        )

    def _merge(self, route: IdempotencyRoute) -> RoutePolicy | None:
        if not route.enabled:
            return None
        base = self.default
        return RoutePolicy(
            require_key=base.require_key if route.require_key is None else route.require_key,
            ttl=base.ttl if route.ttl is None else route.ttl,
            unknown_outcome=route.unknown_outcome or base.unknown_outcome,
            concurrent=route.concurrent or base.concurrent,
        )

    def for_request(self, method: str, target: str) -> RoutePolicy | None:
        """The policy for ``method target``, or None when the request is not covered.

        ``target`` is the raw path (and query) as the client sent it; routes are matched on its
        ``proxy.paths.route_key`` form, so ``/CHARGES/``, ``//charges`` or ``/x/../charges``
        cannot step around a route's settings.
        """
        if method.upper() not in self.methods:
            return None
        if self.routes:
            key = route_key(target)
            for pattern, policy in self.routes:
                if route_matches(key, pattern):
                    return policy
        return self.default
