"""What HTTP answers mean for a request that may change state, shared by the proxy and the sagas.

One definition of which statuses say "not processed" (the client may send the request again)
and which leave it open whether the request took effect. The idempotency layer releases a key
on the first and stores the second only under ``unknown_outcome: hold``; the saga runner retries
a step call on both and compensates a failed step only on the second. This package imports
neither ``proxy`` nor ``saga_runner``.
"""

from __future__ import annotations

from typing import Final

NOT_PROCESSED: Final = frozenset({408, 425, 429, 503})
"""Answers that say the request was not acted on: 408 Request Timeout (RFC 9110 §15.5.9),
425 Too Early (RFC 8470), 429 Too Many Requests (RFC 6585) and 503 Service Unavailable."""


def outcome_unknown(status: int) -> bool:
    """Whether a final answer with ``status`` leaves open if the request took effect.

    A 5xx other than 503: the server failed while it may have been acting on the request.
    Any other answer is definite (done, refused, or not processed).
    """
    return status >= 500 and status not in NOT_PROCESSED


def worth_retrying(status: int) -> bool:
    """Whether the same request may succeed when sent again: not processed, or any 5xx."""
    return status in NOT_PROCESSED or status >= 500
