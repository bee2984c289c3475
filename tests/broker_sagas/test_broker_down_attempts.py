"""Which recorded attempts of a step found its broker down (``broker_down_attempts``): a run
resumed after a crash counts them so that they use up none of the step's retries."""

from __future__ import annotations

from datetime import UTC, datetime

from saga_runner.publishing import BROKER_DOWN, broker_down_attempts
from saga_runner.records import StepAttempt
from saga_runner.states import AttemptKind

ACTION, UNDO = AttemptKind.ACTION, AttemptKind.COMPENSATION
DOWN = f"{BROKER_DOWN}broker 'jobs': connection refused"


def rows(*made: tuple[int, AttemptKind, int, str | None]) -> list[StepAttempt]:
    """Attempt rows ``(step_order, kind, attempt, error)``, in the order written."""
    at = datetime.now(UTC)
    return [
        StepAttempt(n, "s", order, kind, attempt, at, 1.0, None, error)
        for n, (order, kind, attempt, error) in enumerate(made)
    ]


def test_only_the_steps_own_attempts_of_that_kind_that_found_the_broker_down_count() -> None:
    made = rows(
        (1, ACTION, 1, DOWN),
        (0, ACTION, 1, DOWN),
        (1, ACTION, 2, "not confirmed by the broker in 1s"),
        (1, ACTION, 3, DOWN),
        (1, UNDO, 1, DOWN),
    )
    assert broker_down_attempts(made, 1, ACTION, before=4) == 2
    assert broker_down_attempts(made, 1, UNDO, before=2) == 1
    assert broker_down_attempts(made, 2, ACTION, before=1) == 0


def test_only_the_current_round_counts_and_never_more_than_the_attempts_before() -> None:
    earlier_round = [(1, UNDO, n, DOWN) for n in (1, 2, 3, 4)]
    made = rows(*earlier_round, (1, UNDO, 1, None), (1, UNDO, 2, DOWN))
    assert broker_down_attempts(made, 1, UNDO, before=3) == 1
    # The new round's first attempt was cut off before its row was written: at most that one.
    assert broker_down_attempts(rows(*earlier_round), 1, UNDO, before=2) == 1
