"""Saga step calls on the two step transports, side by side in one run, without the rest of a saga.

``python -m bench.step_clients`` starts the benchmark's upstream (``bench/upstream.py``) pinned to
the server core(s) and, pinned to the load core(s), sends the payment saga's first step
(``POST /orders`` with a small JSON body, the headers a rendered step carries) through:

- ``lean``: ``proxy.sagas.step_transport.UpstreamStepTransport`` (what ``serve`` uses);
- ``aiohttp``: ``saga_runner.transport.AiohttpTransport``.

Each transport runs ``CONCURRENCY`` calls in flight (as under the saga benchmark's 32 connections)
and this process's CPU per call is measured: what a step call takes from the sidecar's core.
Transports alternate within a round and rounds repeat; the table gives the median over rounds
and the spread (min-max). Environment: ``BENCH_ROUNDS`` (default 5), ``BENCH_CALLS`` (per round,
default 3000), ``BENCH_SERVER_CPUS`` / ``BENCH_LOAD_CPUS``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from tempfile import TemporaryDirectory

from bench.procs import LOAD_CORE, Server, free_port
from bench.redis_clients import cpus, loop_factory, spread
from proxy.sagas.step_transport import UpstreamStepTransport
from saga_runner.transport import AiohttpTransport, StepTransport

CONCURRENCY = 32
HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "saga-1-create_order"}
BODY = b'{"order_no":"o-1-1","amount":"42.5"}'


async def calls(transport: StepTransport, url: str, count: int) -> float:
    """CPU µs of this process per call, ``CONCURRENCY`` calls in flight."""
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            answer = await transport.exchange(
                "POST", url, HEADERS, BODY, seconds=5.0, limit=1 << 20
            )
            assert answer.status == 201, answer.status

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - cpu) / count * 1e6


async def measure(port: int, rounds: int, count: int) -> dict[str, list[float]]:
    """Both transports, alternating, ``rounds`` times."""
    url = f"http://127.0.0.1:{port}/orders"
    results: dict[str, list[float]] = {}
    async with AsyncExitStack() as stack:
        transports: dict[str, StepTransport] = {
            "lean": UpstreamStepTransport(),
            "aiohttp": AiohttpTransport(),
        }
        for transport in transports.values():
            stack.push_async_callback(transport.close)
            await calls(transport, url, 500)  # warm up
        names = list(transports)
        for number in range(rounds):
            order = names[number % 2 :] + names[: number % 2]
            for name in order:
                results.setdefault(name, []).append(await calls(transports[name], url, count))
            print(f"round {number + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def main() -> int:
    """Start the upstream, measure, print the table."""
    rounds = int(os.environ.get("BENCH_ROUNDS", 5))
    count = int(os.environ.get("BENCH_CALLS", 3000))
    os.sched_setaffinity(0, cpus(LOAD_CORE))
    with TemporaryDirectory() as workdir:
        port = free_port()
        upstream = Server(
            "upstream", [sys.executable, "-m", "bench.upstream", str(port)], port, Path(workdir)
        ).start()
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                results = runner.run(measure(port, rounds, count))
        finally:
            upstream.stop()
    lean = statistics.median(results["lean"])
    print(f"{rounds} rounds of {count} calls, {CONCURRENCY} in flight; median (min-max).\n")
    print("| step transport | client CPU µs per step call | vs lean |\n|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {spread(values)} | {statistics.median(values) - lean:+.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
