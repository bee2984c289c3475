"""Idempotency-Key protection: unit tests, the store contract suite, and end-to-end tests."""
