"""Bundled demo services for ``make run``: the app the sidecar fronts, and orders/payments services."""
