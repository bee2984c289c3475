"""Baselines the sidecar is measured against in the same ``make bench`` run."""
