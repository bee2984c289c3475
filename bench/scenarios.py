"""What one benchmark run measures: the scenarios, each a wrk script against a target.

Every scenario is run under load (64 connections, 32 for sagas) and, unless marked otherwise,
unloaded (1 connection) for its p50. Within a round the scenarios run one after the other, and
rounds repeat, so the baselines and the sidecar alternate (A/B) and drift in the machine's load
touches them alike; the report takes per-round ratios and their median.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

STORM_BODY = (
    '{"customer":"cus_0001","amount":4200,"currency":"eur","description":"' + "x" * 120 + '"}'
)


@dataclass(frozen=True)
class Scenario:
    """One row of the results table."""

    key: str
    title: str
    target: str
    script: str
    connections: int = 64
    unloaded: bool = True
    holds_key: bool = False


SCENARIOS = (
    Scenario("get.direct", "GET, direct to upstream", "direct", "get"),
    Scenario("get.aiohttp", "GET, minimal aiohttp proxy", "aiohttp", "get"),
    Scenario("get.nginx", "GET, nginx", "nginx", "get"),
    Scenario("get.sidecar", "GET pass-through, sidecar", "sidecar", "get"),
    # BENCH_TRACING=1 only: the same sidecar exporting every span to a local OTLP sink.
    Scenario("get.traced", "GET pass-through, sidecar, tracing on", "sidecar-traced", "get"),
    Scenario("post.direct", "POST, direct to upstream", "direct", "post"),
    Scenario("post.aiohttp", "POST, minimal aiohttp proxy", "aiohttp", "post"),
    Scenario("post.nginx", "POST, nginx", "nginx", "post"),
    Scenario("post.sidecar", "POST pass-through, sidecar", "sidecar", "post"),
    Scenario("delete204.direct", "DELETE → 204, direct to upstream", "direct", "delete"),
    Scenario("delete204.sidecar", "DELETE → 204 pass-through, sidecar", "sidecar", "delete"),
    Scenario("miss.redis", "idempotent miss, Redis", "sidecar", "miss"),
    Scenario("miss.memory", "idempotent miss, memory", "sidecar-memory", "miss"),
    Scenario("replay.redis", "replay, Redis", "sidecar", "replay"),
    Scenario("storm.redis", "409 storm, Redis", "sidecar", "storm", unloaded=False, holds_key=True),
    Scenario("saga.pg", "2-step saga, PostgreSQL", "saga-pg", "saga", connections=32),
    Scenario(
        "saga.pg-aiohttp",
        "2-step saga, PostgreSQL, steps on aiohttp's client",
        "saga-pg-aiohttp",
        "saga",
        connections=32,
    ),
    Scenario("saga.sqlite", "2-step saga, SQLite", "saga-sqlite", "saga", connections=32),
    Scenario(
        "saga.pg-parallel",
        "3-member parallel saga, PostgreSQL",
        "saga-pg",
        "saga_parallel",
        connections=32,
    ),
)


@contextmanager
def held_key(port: int, arg: str) -> Iterator[None]:
    """Keep one storm request in flight (its upstream answers after 10 minutes) meanwhile."""
    request = (
        f"POST /slow?ms=600000 HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: storm-{arg}\r\nContent-Length: {len(STORM_BODY)}\r\n\r\n{STORM_BODY}"
    )
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(request.encode())
        yield
    finally:
        sock.close()
