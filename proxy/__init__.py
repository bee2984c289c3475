"""proxy: the saga-sidecar reverse proxy (listeners, forwarding, idempotency, admin API)."""
