"""RetryPolicy: validated values, contract defaults, full-jitter delays within their bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from saga_runner.retry import ACTION_RETRY, COMPENSATION_RETRY, RetryPolicy, merge_retry


class FixedRandom:
    """An rng whose ``uniform`` returns the given fraction of the range (0 = low, 1 = high)."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


def test_contract_defaults() -> None:
    assert RetryPolicy(attempts=3, backoff=0.2, multiplier=2, max_backoff=10) == ACTION_RETRY
    assert COMPENSATION_RETRY.model_dump() == {
        "attempts": 10,
        "backoff": 0.2,
        "multiplier": 2.0,
        "max_backoff": 30.0,
    }


def test_durations_accept_yaml_strings() -> None:
    policy = RetryPolicy.model_validate({"backoff": "100ms", "max_backoff": "5s"})
    assert (policy.backoff, policy.max_backoff) == (0.1, 5.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"attempts": 0}, "greater than or equal to 1"),
        ({"multiplier": 0.5}, "greater than or equal to 1"),
        ({"backoff": "-1s"}, "expected a duration"),
        ({"backoff": "2s", "max_backoff": "1s"}, "must not be less than backoff"),
        ({"tries": 3}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_values_are_rejected(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RetryPolicy.model_validate(values)


def test_policy_is_frozen() -> None:
    with pytest.raises(ValidationError):
        ACTION_RETRY.attempts = 5  # type: ignore[misc]


def test_fields_are_documented() -> None:
    assert all(field.description for field in RetryPolicy.model_fields.values())


def test_ceiling_grows_exponentially_then_caps() -> None:
    policy = RetryPolicy(attempts=10, backoff=0.2, multiplier=2, max_backoff=1.0)
    assert [policy.ceiling(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.0]


def test_ceiling_of_huge_attempt_number_is_the_cap_not_an_overflow() -> None:
    assert COMPENSATION_RETRY.ceiling(100_000) == 30.0


def test_delay_spans_zero_to_ceiling() -> None:
    policy = RetryPolicy(backoff=1.0, multiplier=3, max_backoff=100)
    assert policy.delay(3, FixedRandom(0.0)) == 0.0
    assert policy.delay(3, FixedRandom(1.0)) == 9.0
    assert policy.delay(3, FixedRandom(0.5)) == 4.5


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        ACTION_RETRY.delay(0, random.Random(1))


def test_can_retry_counts_the_first_attempt() -> None:
    policy = RetryPolicy(attempts=3)
    assert [policy.can_retry(n) for n in (1, 2, 3)] == [True, True, False]


def test_merge_retry_fills_missing_keys_from_the_role_default() -> None:
    merged = merge_retry({"attempts": 4}, COMPENSATION_RETRY)
    assert RetryPolicy.model_validate(merged) == COMPENSATION_RETRY.model_copy(
        update={"attempts": 4}
    )
    assert merge_retry("nonsense", ACTION_RETRY) == "nonsense"


@given(
    attempts=st.integers(min_value=1, max_value=50),
    backoff=st.floats(min_value=0, max_value=60, allow_nan=False),
    multiplier=st.floats(min_value=1, max_value=10, allow_nan=False),
    extra_cap=st.floats(min_value=0, max_value=600, allow_nan=False),
    attempt=st.integers(min_value=1, max_value=2000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_is_always_within_full_jitter_bounds(
    attempts: int,
    backoff: float,
    multiplier: float,
    extra_cap: float,
    attempt: int,
    seed: int,
) -> None:
    policy = RetryPolicy(
        attempts=attempts, backoff=backoff, multiplier=multiplier, max_backoff=backoff + extra_cap
    )
    try:
        bound = min(policy.max_backoff, backoff * multiplier ** (attempt - 1))
    except OverflowError:
        bound = policy.max_backoff
    delay = policy.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= bound
