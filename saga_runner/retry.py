"""Retry policy of a saga step: how many attempts, and how long to wait between them.

``RetryPolicy`` is a small validated value object (after Temporal's and Step Functions' retry
vocabulary). The wait before the next attempt is exponential backoff with FULL jitter: uniform in
``[0, min(max_backoff, backoff * multiplier ** (attempt - 1))]``, so replicas retrying the same
upstream spread out instead of arriving in waves. ``ACTION_RETRY`` and ``COMPENSATION_RETRY`` are
the defaults of docs/SAGAS.md; a partial ``retry:`` mapping in a saga file fills its missing keys
from the default of its role (see ``merge_retry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from yamlconfig.errors import KeyValueError
from yamlconfig.units import Duration


class UniformRandom(Protocol):
    """The part of ``random.Random`` that ``RetryPolicy.delay`` needs (injectable in tests)."""

    def uniform(self, a: float, b: float) -> float:
        """Return a float between ``a`` and ``b``."""
        ...


class RetryPolicy(BaseModel):
    """How often a call is attempted and how long to wait between attempts."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    attempts: int = Field(default=3, ge=1)
    """Total number of attempts, the first one included (1: never retried)."""

    backoff: Duration = 0.2
    """Upper bound of the wait after the first failed attempt, in seconds (YAML: ``200ms``)."""

    multiplier: float = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    """Factor the upper bound grows by after each further failed attempt."""

    max_backoff: Duration = 10.0
    """Cap on the upper bound of any single wait, in seconds (YAML: ``10s``)."""

    @model_validator(mode="after")
    def _cap_not_below_backoff(self) -> RetryPolicy:
        if self.max_backoff < self.backoff:
            raise KeyValueError(
                ("max_backoff",),
                f"max_backoff ({self.max_backoff:g}s) must not be less than backoff "
                f"({self.backoff:g}s)",
            )
        return self

    def ceiling(self, attempt: int) -> float:
        """The largest wait after failed attempt number ``attempt`` (1-based), in seconds.

        Raises:
            ValueError: if ``attempt`` is less than 1.
        """
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        try:
            grown = self.backoff * self.multiplier ** (attempt - 1)
        except OverflowError:
            return self.max_backoff
        return min(self.max_backoff, grown)

    def delay(self, attempt: int, rng: UniformRandom) -> float:
        """The wait after failed attempt number ``attempt`` (1-based): full jitter.

        Args:
            attempt: the number of the attempt that just failed, starting at 1.
            rng: a ``random.Random`` (or anything with ``uniform``).

        Returns:
            Seconds, uniformly drawn from ``[0, ceiling(attempt)]``.
        """
        ceiling = self.ceiling(attempt)
        return min(ceiling, max(0.0, rng.uniform(0.0, ceiling)))

    def can_retry(self, attempt: int) -> bool:
        """Whether another attempt is allowed after failed attempt number ``attempt``."""
        return attempt < self.attempts


ACTION_RETRY = RetryPolicy(attempts=3, backoff=0.2, multiplier=2.0, max_backoff=10.0)
"""Default retry of a step's action (docs/SAGAS.md)."""

COMPENSATION_RETRY = RetryPolicy(attempts=10, backoff=0.2, multiplier=2.0, max_backoff=30.0)
"""Default retry of a step's compensation (docs/SAGAS.md)."""


def merge_retry(value: Any, default: RetryPolicy) -> Any:
    """Fill the keys missing from a partial ``retry:`` mapping from ``default``.

    Anything that is not a mapping is returned unchanged for pydantic to validate (or reject).
    """
    if isinstance(value, Mapping):
        return {**default.model_dump(), **value}
    return value
