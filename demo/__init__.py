"""Bundled demo services for `make run`: the app the sidecar fronts, plus orders and payments."""
