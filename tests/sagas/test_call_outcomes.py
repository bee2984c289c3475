"""How a step call's answer is classified: success, retry, give up, and unknown outcomes.

Pure functions of ``saga_runner.caller`` and ``saga_runner.attempts`` (no store, no network).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from saga_runner.attempts import outcome_unknown
from saga_runner.caller import CallResult, Outcome, classify, decode_body, parse_retry_after


@pytest.mark.parametrize(
    ("status", "success", "outcome"),
    [
        (200, None, Outcome.SUCCESS),
        (204, None, Outcome.SUCCESS),
        (201, [200, 201], Outcome.SUCCESS),
        (204, [200, 201], Outcome.PERMANENT),
        (302, None, Outcome.PERMANENT),
        (400, None, Outcome.PERMANENT),
        (402, None, Outcome.PERMANENT),
        (404, None, Outcome.PERMANENT),
        (409, None, Outcome.PERMANENT),
        (408, None, Outcome.RETRYABLE),
        (425, None, Outcome.RETRYABLE),
        (429, None, Outcome.RETRYABLE),
        (500, None, Outcome.RETRYABLE),
        (503, None, Outcome.RETRYABLE),
        (504, None, Outcome.RETRYABLE),
        (404, [*range(200, 300), 404, 410], Outcome.SUCCESS),
        (409, [409], Outcome.SUCCESS),
    ],
)
def test_a_status_is_classified_against_the_success_list(
    status: int, success: list[int] | None, outcome: Outcome
) -> None:
    assert classify(status, success) is outcome


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)

    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(later, now=now.timestamp()) == 90.0
    assert parse_retry_after(earlier, now=now.timestamp()) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


def result(status: int | None, *, sent: bool = True) -> CallResult:
    """A failed call result with ``status`` (None: no answer)."""
    return CallResult(Outcome.RETRYABLE, status, {}, None, 0.1, sent=sent)


@pytest.mark.parametrize(
    ("status", "sent", "unknown"),
    [
        (None, True, True),
        (None, False, False),
        (500, True, True),
        (502, True, True),
        (504, True, True),
        (503, True, False),
        (429, True, False),
        (408, True, False),
        (409, True, False),
    ],
)
def test_only_answers_that_may_have_taken_effect_count_as_unknown_outcomes(
    status: int | None, sent: bool, unknown: bool
) -> None:
    assert outcome_unknown(result(status, sent=sent)) is unknown


def test_a_body_is_json_when_it_parses_and_text_otherwise() -> None:
    assert decode_body(b'{"id": 1}', "application/json") == {"id": 1}
    assert decode_body(b"[1, 2]", "text/plain") == [1, 2]
    assert decode_body(b"{broken", "application/json") == "{broken"
    assert decode_body(b"plain \xff", "text/plain") == "plain \ufffd"
    assert decode_body(b"", "application/json") is None
