"""A histogram observed on the event loop's thread only: one bisect and two additions, no lock.

prometheus_client's ``Histogram`` takes a lock for its sum and another for the bucket on every
observation, since any thread may observe it: most of what timing a forwarded request costs.
The sidecar observes from its event loop alone, so ``LoopHistogram`` keeps plain counts and a
sum and exports them, through the app's registry, exactly as a ``Histogram`` would.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class LoopHistogram:
    """An unlabelled histogram with the given upper bounds (``+Inf`` is added), on ``registry``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(float(bound) for bound in buckets)
        edges = (*self._bounds, math.inf)
        # The library's own spelling of a bound ("1.0", "+Inf"): the same ``le`` values.
        self._labels = [floatToGoString(edge) for edge in edges]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._labels)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is at least ``value``."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def describe(self) -> Iterable[Metric]:
        """The family without samples (the registry checks names with it)."""
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        """The cumulative buckets, the count and the sum."""
        family = HistogramMetricFamily(self.name, self.documentation)
        buckets = list(zip(self._labels, accumulate(self._counts), strict=True))
        family.add_metric([], buckets, self._sum)
        return [family]
