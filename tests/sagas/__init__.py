"""Saga runner suite: engine, trigger routes and a real sidecar over both saga stores."""
