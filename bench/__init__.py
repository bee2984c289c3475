"""The benchmark suite behind ``make bench`` (see docs/BENCHMARKS.md); not shipped in the wheel."""
