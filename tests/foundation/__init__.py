"""End-to-end tests of the pass-through proxy, config loading, admin listener and shutdown."""
