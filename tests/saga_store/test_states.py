"""The saga and step transition tables (no database)."""

from __future__ import annotations

import pytest

from saga_runner.errors import IllegalTransition
from saga_runner.states import (
    CONFIRM_TRANSITIONS,
    SAGA_TRANSITIONS,
    STEP_TRANSITIONS,
    AttemptKind,
    SagaStatus,
    StepStatus,
    check_transition,
    step_transitions,
)


def test_status_values_are_exactly_the_contract_ones() -> None:
    assert [s.value for s in SagaStatus] == [
        "running",
        "compensating",
        "completed",
        "compensated",
        "failed",
    ]
    assert [s.value for s in StepStatus] == [
        "pending",
        "running",
        "waiting",
        "succeeded",
        "failed",
        "compensating",
        "compensated",
        "compensation_failed",
    ]


def test_every_status_has_a_row_in_its_table() -> None:
    assert set(SAGA_TRANSITIONS.allowed) == set(SagaStatus)
    assert set(STEP_TRANSITIONS.allowed) == set(StepStatus)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (SagaStatus.RUNNING, SagaStatus.RUNNING),
        (SagaStatus.RUNNING, SagaStatus.COMPENSATING),
        (SagaStatus.RUNNING, SagaStatus.COMPLETED),
        (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED),
        (SagaStatus.COMPENSATING, SagaStatus.FAILED),
        (SagaStatus.FAILED, SagaStatus.COMPENSATING),
        (SagaStatus.FAILED, SagaStatus.RUNNING),
        (StepStatus.PENDING, StepStatus.RUNNING),
        (StepStatus.RUNNING, StepStatus.RUNNING),
        (StepStatus.RUNNING, StepStatus.SUCCEEDED),
        (StepStatus.RUNNING, StepStatus.WAITING),
        (StepStatus.WAITING, StepStatus.SUCCEEDED),
        (StepStatus.WAITING, StepStatus.FAILED),
        (StepStatus.WAITING, StepStatus.COMPENSATING),
        (StepStatus.FAILED, StepStatus.COMPENSATING),
        (StepStatus.SUCCEEDED, StepStatus.COMPENSATING),
        (StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED),
        (StepStatus.COMPENSATION_FAILED, StepStatus.COMPENSATING),
    ],
)
def test_recovery_and_operator_transitions_are_allowed(
    old: SagaStatus | StepStatus, new: SagaStatus | StepStatus
) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (SagaStatus.COMPLETED, SagaStatus.RUNNING),
        (SagaStatus.COMPENSATED, SagaStatus.COMPENSATING),
        (SagaStatus.RUNNING, SagaStatus.COMPENSATED),
        (SagaStatus.COMPENSATING, SagaStatus.RUNNING),
        (StepStatus.PENDING, StepStatus.SUCCEEDED),
        (StepStatus.SUCCEEDED, StepStatus.RUNNING),
        (StepStatus.COMPENSATED, StepStatus.COMPENSATING),
        (StepStatus.PENDING, StepStatus.COMPENSATING),
        (StepStatus.PENDING, StepStatus.WAITING),
        (StepStatus.WAITING, StepStatus.RUNNING),
    ],
)
def test_illegal_transitions_raise_with_both_statuses(
    old: SagaStatus | StepStatus, new: SagaStatus | StepStatus
) -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition(old, new)
    assert (caught.value.old, caught.value.new) == (old.value, new.value)
    assert f"{old.value} -> {new.value}" in str(caught.value)


def test_terminal_saga_statuses_allow_nothing() -> None:
    assert SAGA_TRANSITIONS.allowed[SagaStatus.COMPLETED] == frozenset()
    assert SAGA_TRANSITIONS.allowed[SagaStatus.COMPENSATED] == frozenset()
    assert STEP_TRANSITIONS.allowed[StepStatus.COMPENSATED] == frozenset()


def test_sources_lists_every_status_that_may_enter_a_status() -> None:
    assert SAGA_TRANSITIONS.sources(SagaStatus.COMPENSATING) == {
        SagaStatus.RUNNING,
        SagaStatus.COMPENSATING,
        SagaStatus.FAILED,
    }
    assert STEP_TRANSITIONS.sources(StepStatus.PENDING) == frozenset()


def test_mixing_saga_and_step_statuses_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        check_transition(SagaStatus.RUNNING, StepStatus.RUNNING)


def test_a_tcc_confirm_has_its_own_table_and_a_saga_step_never_runs_again() -> None:
    confirm = step_transitions(AttemptKind.CONFIRM)
    assert confirm is CONFIRM_TRANSITIONS
    assert confirm.sources(StepStatus.RUNNING) == {
        StepStatus.SUCCEEDED,
        StepStatus.RUNNING,
        StepStatus.FAILED,
    }
    assert confirm.allowed[StepStatus.COMPENSATING] == frozenset()
    assert confirm.allowed[StepStatus.PENDING] == frozenset()
    for phase in (None, AttemptKind.TRY, AttemptKind.CANCEL):
        assert step_transitions(phase) is STEP_TRANSITIONS
    assert not STEP_TRANSITIONS.can(StepStatus.SUCCEEDED, StepStatus.RUNNING)
