"""Steps that finish later (``await``): callback tokens, and how a callback's outcome is judged.

An awaiting step's action only starts its work; the step is ``waiting`` until its outcome
arrives. Every call of such a step carries a callback URL ending in a token: 256 random bits
(``new_token``), of which the store keeps only the sha256 (``token_hash``), bound to that one
step of that one saga. A callback is ``success`` or ``failure`` (with a ``result``), or a
``heartbeat`` that pushes the await's timeout forward by its length. The store records it only
while the step has no outcome yet and its wait has not passed (timeout, deadline, a saga no
longer running); otherwise ``judge`` says what the caller is told. The timeout and the deadline
end a wait the same way, with the outcome ``timeout`` or ``deadline``, so whichever reaches the
step row first wins and the other is refused.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

TOKEN_BYTES: Final = 32
"""Random bytes in a callback token (``secrets.token_urlsafe``: 43 URL-safe characters)."""

_TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_-]{43}$")


class AwaitOutcome(StrEnum):
    """What ended a wait (``saga_steps.await_outcome``), or a heartbeat that extends it."""

    SUCCESS = "success"
    FAILURE = "failure"
    HEARTBEAT = "heartbeat"
    TIMEOUT = "timeout"
    DEADLINE = "deadline"

    @property
    def reported(self) -> bool:
        """Whether the service reported it (``success`` or ``failure``)."""
        return self in (AwaitOutcome.SUCCESS, AwaitOutcome.FAILURE)


CALLBACK_OUTCOMES: Final = (AwaitOutcome.SUCCESS, AwaitOutcome.FAILURE, AwaitOutcome.HEARTBEAT)
"""The outcomes a callback may send."""


class Verdict(StrEnum):
    """What became of a callback (the HTTP answer the endpoint gives for it)."""

    RECORDED = "recorded"
    """202: recorded (a heartbeat: the timeout moved)."""
    SAME = "same"
    """200: the same outcome was already recorded."""
    CONFLICT = "conflict"
    """409: a different outcome was already recorded."""
    UNKNOWN = "unknown"
    """404: no such token (malformed, forged, or its saga deleted)."""
    GONE = "gone"
    """410: the step no longer waits (timeout, deadline, abort)."""


@dataclass(frozen=True)
class CallbackAnswer:
    """A callback's verdict, and the saga it was for (None for an unknown token)."""

    verdict: Verdict
    saga_id: str | None = None
    saga_name: str | None = None


def new_token() -> str:
    """A fresh callback token (never stored: only its ``token_hash`` is)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the store keeps of ``token``: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def well_formed(token: str) -> bool:
    """Whether ``token`` has the shape of one ``new_token`` makes (others are unknown at once)."""
    return bool(_TOKEN_RE.match(token))


def judge(state: dict[str, Any] | None, outcome: AwaitOutcome, now: datetime) -> Verdict:
    """The verdict on a callback the store did not record, from the state of its step.

    Args:
        state: ``token_state`` of its token (None: unknown token).
        outcome: what the callback sent.
        now: when it was refused.
    """
    if state is None:
        return Verdict.UNKNOWN
    recorded = state["await_outcome"]
    if recorded in (AwaitOutcome.SUCCESS, AwaitOutcome.FAILURE):
        return Verdict.SAME if recorded == outcome else Verdict.CONFLICT
    deadline, until = state["deadline_at"], state["wait_until"]
    waiting = (
        recorded is None
        and state["saga_status"] == "running"
        and (deadline is None or deadline > now)
        and (until is None or until > now)
    )
    if waiting and outcome is AwaitOutcome.HEARTBEAT and state["status"] == "running":
        return Verdict.RECORDED  # the action's answer is not in yet: its wait has not started
    return Verdict.GONE
