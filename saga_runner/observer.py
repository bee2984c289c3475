"""What the engine reports as sagas run, as a Protocol, so metrics stay out of the engine.

The proxy implements ``SagaObserver`` with Prometheus counters; tests and the CLI use
``NullObserver``.
"""

from __future__ import annotations

from typing import Protocol

from saga_runner.states import AttemptKind, SagaStatus


class SagaObserver(Protocol):
    """Receives saga lifecycle events from the engine."""

    def saga_started(self, saga: str) -> None:
        """A new saga instance was created."""

    def saga_finished(self, saga: str, status: SagaStatus, seconds: float, saga_id: str) -> None:
        """Instance ``saga_id`` of ``saga`` reached ``completed``, ``compensated`` or ``failed``
        after ``seconds`` (reported by whichever run of this process ended it)."""

    def step_attempt(
        self, saga: str, step: str, kind: AttemptKind, outcome: str, seconds: float
    ) -> None:
        """One call of a step's action or compensation ended with ``outcome`` after
        ``seconds``."""

    def run_started(self, saga: str) -> None:
        """This process began (or resumed) running a saga."""

    def run_stopped(self, saga: str) -> None:
        """This process stopped running a saga (finished, paused or lost its lease)."""

    def deadline_exceeded(self, saga: str) -> None:
        """A saga's deadline passed before it finished its forward steps."""


class NullObserver:
    """An observer that ignores every event."""

    def saga_started(self, saga: str) -> None:
        """Ignore."""

    def saga_finished(self, saga: str, status: SagaStatus, seconds: float, saga_id: str) -> None:
        """Ignore."""

    def step_attempt(
        self, saga: str, step: str, kind: AttemptKind, outcome: str, seconds: float
    ) -> None:
        """Ignore."""

    def run_started(self, saga: str) -> None:
        """Ignore."""

    def run_stopped(self, saga: str) -> None:
        """Ignore."""

    def deadline_exceeded(self, saga: str) -> None:
        """Ignore."""
