"""Durability tests: sagas survive crashes, restarts and competing replicas."""
