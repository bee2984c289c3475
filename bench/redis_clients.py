"""The idempotent miss's Redis work on three clients, side by side in one run.

``python -m bench.redis_clients`` (needs ``redis-server`` and ``coredis``: the ``bench`` extra)
starts a private ``redis-server`` pinned to the server core(s) and, pinned to the load core(s),
runs what one idempotent miss asks of Redis (the store's ``acquire`` script that takes the lock,
then ``complete`` that stores a ~390-byte record in its place and publishes on its channel, by
EVALSHA, with the store's own Lua and lock values) through:

- ``resp``: the store's pipelined client (``proxy.idempotency.resp.PipelinedRedis``);
- ``coredis``: ``coredis.Redis`` with its default pool;
- ``redis-py``: redis-py's ``evalsha`` over a 64-connection blocking pool, as the store's
  ``Script`` objects run on TLS, Sentinel and Cluster.

Each client runs two loads: one miss at a time (wall time per miss: the latency a request pays)
and ``CONCURRENCY`` misses in flight (the client's CPU per miss: what it takes from the proxy's
core under load). Clients alternate within a round and rounds repeat; the table gives the median
over rounds and the spread (min-max). Environment: ``BENCH_ROUNDS`` (default 5),
``BENCH_MISSES`` (per load, default 3000), ``BENCH_SERVER_CPUS`` / ``BENCH_LOAD_CPUS``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

from bench.procs import LOAD_CORE, Server, free_port
from proxy.idempotency.resp import PipelinedRedis
from proxy.idempotency.store import lock_value, new_token, owner_prefix

CONCURRENCY = 64
LEASE_MS = 30_000
TTL_MS = 60_000
RECORD = b"R1" + os.urandom(194).hex().encode()  # the size of the bench's stored answers

Eval = Callable[[str, list[str], tuple[Any, ...]], Awaitable[Any]]


def script(name: str) -> str:
    """The store's Lua script ``name``."""
    return resources.files("proxy.idempotency").joinpath(f"{name}.lua").read_text("utf-8")


def cpus(spec: str) -> set[int]:
    """A taskset list (``0``, ``0,1``, ``0-3``) as a set of CPU numbers."""
    found: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


@dataclass
class Figures:
    """One client's samples over the rounds."""

    sequential_us: list[float] = field(default_factory=list)
    concurrent_cpu_us: list[float] = field(default_factory=list)
    concurrent_rate: list[float] = field(default_factory=list)


async def one_miss(run: Eval, shas: dict[str, str], prefix: str, number: int) -> None:
    """Acquire a fresh key's lock, then complete it with a record, as a miss does."""
    token = new_token()
    key = f"{prefix}:{{k{number}}}"
    taken = await run(shas["acquire"], [key], (lock_value(token, "f" * 16), LEASE_MS))
    assert taken is None, taken
    done = await run(shas["complete"], [key], (owner_prefix(token), RECORD, TTL_MS, f"{key}:done"))
    assert done == 1, done


async def sequential(run: Eval, shas: dict[str, str], misses: int) -> float:
    """Wall µs per miss, one at a time."""
    prefix = f"bench-rc-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    for number in range(misses):
        await one_miss(run, shas, prefix, number)
    return (time.perf_counter() - started) / misses * 1e6


async def concurrent(run: Eval, shas: dict[str, str], misses: int) -> tuple[float, float]:
    """CPU µs of this process per miss, and misses per second, ``CONCURRENCY`` in flight."""
    prefix = f"bench-rc-{uuid.uuid4().hex[:8]}"
    numbers = iter(range(misses))

    async def worker() -> None:
        for number in numbers:
            await one_miss(run, shas, prefix, number)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / misses * 1e6, misses / wall


async def clients(stack: AsyncExitStack, port: int) -> dict[str, Eval]:
    """Each client's EVALSHA, connected to 127.0.0.1:``port``."""
    import coredis

    resp = PipelinedRedis("127.0.0.1", port)
    stack.push_async_callback(resp.close)

    async def resp_eval(sha: str, keys: list[str], args: tuple[Any, ...]) -> Any:
        return await resp.execute(b"EVALSHA", sha, len(keys), *keys, *args)

    core = await stack.enter_async_context(coredis.Redis("127.0.0.1", port))

    async def core_eval(sha: str, keys: list[str], args: tuple[Any, ...]) -> Any:
        return await core.evalsha(sha, keys, args)

    pool = BlockingConnectionPool(host="127.0.0.1", port=port, max_connections=CONCURRENCY)
    redispy = Redis.from_pool(pool)
    stack.push_async_callback(redispy.aclose)

    async def redispy_eval(sha: str, keys: list[str], args: tuple[Any, ...]) -> Any:
        return await redispy.evalsha(sha, len(keys), *keys, *args)

    return {"resp": resp_eval, "coredis": core_eval, "redis-py": redispy_eval}


async def measure(port: int, rounds: int, misses: int) -> dict[str, Figures]:
    """Every client, alternating, ``rounds`` times."""
    results: dict[str, Figures] = {}
    async with AsyncExitStack() as stack:
        runs = await clients(stack, port)
        loader = PipelinedRedis("127.0.0.1", port)
        stack.push_async_callback(loader.close)
        shas = {
            name: (await loader.execute(b"SCRIPT", b"LOAD", script(name))).decode()
            for name in ("acquire", "complete")
        }
        for run in runs.values():  # warm up: connections, pools, code paths
            await sequential(run, shas, 200)
            await concurrent(run, shas, 500)
        names = list(runs)
        for number in range(rounds):
            order = names[number % len(names) :] + names[: number % len(names)]
            for name in order:
                figures = results.setdefault(name, Figures())
                figures.sequential_us.append(await sequential(runs[name], shas, misses))
                cpu, rate = await concurrent(runs[name], shas, misses)
                figures.concurrent_cpu_us.append(cpu)
                figures.concurrent_rate.append(rate)
                await loader.execute(b"FLUSHDB")
            print(f"round {number + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def spread(values: list[float], digits: int = 0) -> str:
    """Median (min-max)."""
    return (
        f"{statistics.median(values):,.{digits}f} "
        f"({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    )


def render(results: dict[str, Figures], rounds: int, misses: int) -> str:
    """The results as a Markdown table, with each client's difference from ``resp``."""
    base = results["resp"]
    lines = [
        f"{rounds} rounds of {misses} misses per load; median (min-max) over rounds.",
        "",
        "| client | µs per miss, one at a time | vs resp | client CPU µs per miss, "
        f"{CONCURRENCY} in flight | vs resp | misses/s, {CONCURRENCY} in flight |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in results.items():
        latency = statistics.median(figures.sequential_us) - statistics.median(base.sequential_us)
        cpu = statistics.median(figures.concurrent_cpu_us) - statistics.median(
            base.concurrent_cpu_us
        )
        lines.append(
            f"| {name} | {spread(figures.sequential_us)} | {latency:+.0f} | "
            f"{spread(figures.concurrent_cpu_us)} | {cpu:+.0f} | "
            f"{spread(figures.concurrent_rate)} |"
        )
    return "\n".join(lines)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop, as ``serve`` installs it, when it is installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> int:
    """Start a private Redis, measure, print the table."""
    try:
        import coredis  # noqa: F401
    except ImportError:
        print("coredis is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    rounds = int(os.environ.get("BENCH_ROUNDS", 5))
    misses = int(os.environ.get("BENCH_MISSES", 3000))
    os.sched_setaffinity(0, cpus(LOAD_CORE))
    with TemporaryDirectory() as workdir:
        port = free_port()
        redis = Server(
            "redis",
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            port,
            Path(workdir),
        ).start()  # fmt: skip
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                results = runner.run(measure(port, rounds, misses))
        finally:
            redis.stop()
    print(render(results, rounds, misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
