"""``LoopHistogram`` exports what prometheus_client's ``Histogram`` exports for the same values,
byte for byte, bucket edges included."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest

from proxy.loop_histogram import LoopHistogram

BUCKETS = (0.0005, 0.001, 0.1, 1, 2.5, 10)
VALUES = (0.0, 0.0005, 0.00050001, 0.1, 0.1000001, 1, 3, 10, 10.5, 1e9, math.inf, -1.0)


def test_exposition_is_the_histograms_byte_for_byte() -> None:
    disable_created_metrics()  # type: ignore[no-untyped-call]  # as the sidecar does
    library, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("t_seconds", "A test.", buckets=BUCKETS, registry=library)
    histogram = LoopHistogram("t_seconds", "A test.", BUCKETS, ours)
    assert generate_latest(ours) == generate_latest(library)
    for value in VALUES:
        reference.observe(value)
        histogram.observe(value)
    assert generate_latest(ours) == generate_latest(library)
    assert ours.get_sample_value("t_seconds_bucket", {"le": "0.0005"}) == 3
    assert ours.get_sample_value("t_seconds_count") == len(VALUES)


def test_a_second_metric_of_the_same_name_is_refused() -> None:
    registry = CollectorRegistry()
    LoopHistogram("t_seconds", "A test.", BUCKETS, registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram("t_seconds", "Again.", registry=registry)
