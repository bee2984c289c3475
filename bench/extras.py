"""Measurements that are not wrk runs: RSS under idle connections, Redis memory per record."""

from __future__ import annotations

import asyncio
import statistics
import time

from redis import Redis

from bench.procs import Server


async def _open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /item HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )  # fmt: skip
        await reader.readexactly(length)
        writers.append(writer)
    return writers


def idle_rss(server: Server, port: int, count: int = 1000) -> dict[str, float]:
    """RSS (MiB) of ``server`` before and with ``count`` idle keep-alive connections open."""

    async def measure() -> dict[str, float]:
        before = server.rss_kib() / 1024
        writers = await _open_idle(port, count)
        await asyncio.sleep(1.0)
        during = server.rss_kib() / 1024
        for writer in writers:
            writer.close()
        return {"before_mib": round(before, 1), "idle_conns_mib": round(during, 1)}

    return asyncio.run(measure())


def redis_record_bytes(url: str, prefix: str, samples: int = 50) -> dict[str, float]:
    """Median ``MEMORY USAGE`` of stored records (not locks) under ``prefix``, and their size."""
    client = Redis.from_url(url)
    usage, length = [], []
    try:
        for key in client.scan_iter(match=f"{prefix}:{{*", count=1000):
            value = client.get(key)
            if not isinstance(value, bytes) or value.startswith(b"L"):
                continue
            usage.append(int(client.memory_usage(key, samples=0) or 0))
            length.append(len(value))
            if len(usage) >= samples:
                break
    finally:
        client.close()
    if not usage:
        return {}
    return {"memory_usage": statistics.median(usage), "value_bytes": statistics.median(length)}


def loadavg() -> float:
    """The 1-minute load average."""
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def settle(seconds: float = 0.3) -> None:
    """Let the last run's connections close before the next starts."""
    time.sleep(seconds)
