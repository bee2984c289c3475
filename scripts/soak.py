"""Soak test (``make soak``): steady mixed load on one real sidecar for minutes; memory and file
descriptors must stay flat and nothing may fail beyond the injected faults.

The sidecar runs as ``saga-sidecar serve`` with Redis idempotency and PostgreSQL sagas
(``REDIS_URL`` / ``DATABASE_URL``, a fresh key prefix and schema, removed at the end) in front of
an upstream this script starts in a subprocess. The load, paced to ``--rate`` requests per second:

====================  =======  =================================================  =============
kind                  share    request                                             expected
====================  =======  =================================================  =============
get                   45 %     ``GET /items``                                      200
injected              5 %      ``GET /status/503`` (the upstream's fault)          503
charge                25 %     ``POST /orders`` with a new ``Idempotency-Key``     201
replay                10 %     the same request again with a recent key            201, replayed
saga                  10 %     ``POST /sagas/ok``: two steps, completes            202
saga_fail             5 %      ``POST /sagas/fail``: the 2nd step answers 500      202
====================  =======  =================================================  =============

Every ``--interval`` seconds it samples the sidecar's resident memory and open descriptors. At the
end every saga must be ``completed`` (ok) or ``compensated`` (fail). Exit 0 when every check
passes; the printed table goes into docs/BENCHMARKS.md.

Usage: ``python scripts/soak.py [--duration 600] [--rate 200] [--concurrency 32]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml
from aiohttp import web
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
MIX = [("get", 45), ("injected", 5), ("charge", 25), ("replay", 10), ("saga", 10), ("saga_fail", 5)]
EXPECTED = {
    "get": 200,
    "injected": 503,
    "charge": 201,
    "replay": 201,
    "saga": 202,
    "saga_fail": 202,
}
ACTIVE = ("running", "compensating")
FAST_RETRY = {"attempts": 2, "backoff": "10ms", "multiplier": 1, "max_backoff": "10ms"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the upstream (run as ``soak.py upstream PORT`` in its own process) -------------------------


async def upstream_handler(request: web.Request) -> web.Response:
    await request.read()
    path = request.path
    if path.startswith("/status/"):
        return web.json_response({"status": int(path.rsplit("/", 1)[1])}, status=int(path[8:]))
    if path == "/steps/fail":
        return web.json_response({"declined": True}, status=500)
    if path.startswith(("/steps/", "/undo/")):
        return web.json_response({"id": uuid.uuid4().hex, "path": path})
    if request.method == "POST":
        await asyncio.sleep(0.005)
        return web.json_response({"order": uuid.uuid4().hex}, status=201)
    return web.json_response({"items": list(range(20))})


def run_upstream(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream_handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- the sidecar under test ---------------------------------------------------------------------


def saga(name: str, second_step: str) -> dict[str, Any]:
    def step(step_name: str, path: str) -> dict[str, Any]:
        return {
            "name": step_name,
            "action": {"service": "app", "method": "POST", "path": path, "body": {"n": 1}},
            "compensation": {"service": "app", "method": "POST", "path": f"/undo/{step_name}"},
            "retry": FAST_RETRY,
        }

    return {
        "name": f"soak_{name}",
        "trigger": {"method": "POST", "path": f"/sagas/{name}"},
        "mode": "async",
        "business_id": "{{ input.id }}",
        "steps": [step("reserve", "/steps/reserve"), step("second", second_step)],
    }


def write_config(workdir: Path, upstream: str, redis_url: str, pg_url: str) -> dict[str, Any]:
    (workdir / "sagas").mkdir()
    for doc in (saga("ok", "/steps/charge"), saga("fail", "/steps/fail")):
        (workdir / "sagas" / f"{doc['name']}.yaml").write_text(
            yaml.safe_dump(doc), encoding="utf-8"
        )
    config = {
        "listen": f"127.0.0.1:{free_port()}",
        "shutdown_grace": "10s",
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "upstream": {"url": upstream, "timeout": "10s"},
        "services": {"app": upstream},
        "idempotency": {"store": redis_url, "lock_timeout": "10s", "ttl": "1h"},
        "sagas": {"store": pg_url, "definitions": ["sagas/*.yaml"]},
        "log": {"format": "json", "level": "warning"},
    }
    (workdir / "sidecar.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return config


def start_process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


async def wait_ready(http: aiohttp.ClientSession, url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{url} not ready within {within}s")


# -- load and sampling --------------------------------------------------------------------------


@dataclass
class Tally:
    """What happened, by request kind: answers, unexpected answers, latencies of the window."""

    done: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    recent_keys: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    def record(self, kind: str, ok: bool, seconds: float, detail: str) -> None:
        self.done[kind] += 1
        self.window.append(seconds)
        if not ok:
            self.unexpected[kind] += 1
            if len(self.examples) < 20:
                self.examples.append(f"{kind}: {detail}")


async def one_request(http: aiohttp.ClientSession, url: str, kind: str, tally: Tally) -> None:
    headers: dict[str, str] = {}
    method, path, body, replay = "GET", "/items", None, False
    if kind == "injected":
        path = "/status/503"
    elif kind in ("charge", "replay"):
        replay = kind == "replay" and bool(tally.recent_keys)
        key = tally.recent_keys[-1] if replay else uuid.uuid4().hex
        method, path, body, headers = "POST", "/orders", b'{"amount": 1}', {"Idempotency-Key": key}
    elif kind in ("saga", "saga_fail"):
        method, path = "POST", "/sagas/ok" if kind == "saga" else "/sagas/fail"
        body = json.dumps({"id": uuid.uuid4().hex}).encode()
    started = time.monotonic()
    try:
        async with http.request(method, url + path, data=body, headers=headers) as response:
            await response.read()
            ok = response.status == EXPECTED[kind]
            if kind == "replay" and replay:
                ok = ok and response.headers.get("Idempotent-Replayed") == "true"
            if kind == "charge" and ok:
                tally.recent_keys.append(headers["Idempotency-Key"])
            tally.record(kind, ok, time.monotonic() - started, f"status {response.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.record(kind, False, time.monotonic() - started, repr(exc))


async def worker(
    http: aiohttp.ClientSession, url: str, tally: Tally, per_second: float, until: float
) -> None:
    rng = random.Random()
    kinds, weights = zip(*MIX, strict=True)
    next_at = time.monotonic() + rng.random() / per_second
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await one_request(http, url, rng.choices(kinds, weights)[0], tally)
        next_at += 1 / per_second


def process_sample(pid: int) -> tuple[int, int]:
    """Resident memory (KiB) and open file descriptors of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    at: float
    rss_kib: int
    fds: int
    requests: int
    p50_ms: float
    p99_ms: float


async def sampler(pid: int, tally: Tally, every: float, until: float, out: list[Sample]) -> None:
    started = time.monotonic()
    while time.monotonic() < until:
        await asyncio.sleep(every)
        rss, fds = process_sample(pid)
        window, tally.window = sorted(tally.window), []
        p50 = statistics.median(window) * 1000 if window else 0.0
        p99 = window[int(len(window) * 0.99) - 1] * 1000 if len(window) >= 100 else 0.0
        sample = Sample(time.monotonic() - started, rss, fds, sum(tally.done.values()), p50, p99)
        out.append(sample)
        print(
            f"  t={sample.at:6.0f}s rss={rss / 1024:7.1f} MiB fds={fds:4d} "
            f"requests={sample.requests:8d} p50={p50:6.1f} ms p99={p99:6.1f} ms",
            flush=True,
        )


# -- checks and report --------------------------------------------------------------------------


async def saga_outcomes(pg_dsn: str, schema: str) -> Counter[tuple[str, str]]:
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    try:
        rows = await conn.fetch(
            "SELECT business_type, status, count(*) AS n FROM saga_instances GROUP BY 1, 2"
        )
        return Counter({(r["business_type"], r["status"]): r["n"] for r in rows})
    finally:
        await conn.close()


async def wait_sagas_done(pg_dsn: str, schema: str, within: float = 120.0) -> Counter[Any]:
    deadline = time.monotonic() + within
    while True:
        outcomes = await saga_outcomes(pg_dsn, schema)
        active = sum(
            n for (_, status), n in outcomes.items() if status in ("running", "compensating")
        )
        if not active or time.monotonic() > deadline:
            return outcomes
        await asyncio.sleep(1)


def flatness(samples: list[Sample]) -> dict[str, float]:
    """Memory and descriptors after the warm-up (the first tenth of the samples).

    A leak is a trend: the mean RSS of the last fifth against the first fifth, and the most
    descriptors open in the second half against the first half (pools fill up to their bounds
    in the first half and stay there).
    """
    steady = samples[max(1, len(samples) // 10) :]
    fifth, half = max(1, len(steady) // 5), max(1, len(steady) // 2)
    return {
        "rss_first_mib": statistics.mean(s.rss_kib for s in steady[:fifth]) / 1024,
        "rss_last_mib": statistics.mean(s.rss_kib for s in steady[-fifth:]) / 1024,
        "rss_peak_mib": max(s.rss_kib for s in samples) / 1024,
        "fds_first": steady[0].fds,
        "fds_last": steady[-1].fds,
        "fds_max_first_half": max(s.fds for s in steady[:half]),
        "fds_max_second_half": max(s.fds for s in steady[half:] or steady),
    }


def checks(flat: dict[str, float], tally: Tally, outcomes: Counter[Any], log: str) -> list[str]:
    """Every failed check, as a sentence (empty: the soak passed)."""
    failed = []
    growth = flat["rss_last_mib"] - flat["rss_first_mib"]
    if growth > max(10.0, flat["rss_first_mib"] * 0.10):
        failed.append(f"memory grew {growth:.1f} MiB during the steady phase")
    if flat["fds_max_second_half"] > flat["fds_max_first_half"] + 5:
        failed.append(
            f"descriptors kept growing: at most {flat['fds_max_first_half']:.0f} open in the "
            f"first half, {flat['fds_max_second_half']:.0f} in the second"
        )
    if sum(tally.unexpected.values()):
        failed.append(f"unexpected answers {dict(tally.unexpected)}: {tally.examples[:5]}")
    wrong = {k: n for k, n in outcomes.items()
             if k not in (("soak_ok", "completed"), ("soak_fail", "compensated"))}  # fmt: skip
    if wrong:
        failed.append(f"sagas not in their expected end state: {wrong}")
    errors = [line for line in log.splitlines() if '"level": "error"' in line]
    if errors:
        failed.append(f"{len(errors)} error log lines, first: {errors[0][:300]}")
    return failed


def report(
    args: argparse.Namespace,
    samples: list[Sample],
    tally: Tally,
    outcomes: Counter[Any],
    failed: list[str],
) -> None:
    """Print the figures as a Markdown table, then PASS or the failed checks."""
    flat = flatness(samples)
    total = sum(tally.done.values())
    p50 = statistics.median(s.p50_ms for s in samples)
    p99 = max((s.p99_ms for s in samples), default=0.0)
    rss = f"{flat['rss_first_mib']:.1f} / {flat['rss_last_mib']:.1f} / {flat['rss_peak_mib']:.1f}"
    fds = (
        f"{flat['fds_first']:.0f} / {flat['fds_last']:.0f} / "
        f"{flat['fds_max_first_half']:.0f}, {flat['fds_max_second_half']:.0f}"
    )
    load = f"{args.duration:g} s, {args.rate:g}/s, {args.concurrency}"
    rows = [
        ("duration, target rate, workers", load),
        ("requests (achieved rate)", f"{total} ({total / args.duration:.0f}/s)"),
        ("by kind", ", ".join(f"{k} {n}" for k, n in sorted(tally.done.items()))),
        ("unexpected answers", str(sum(tally.unexpected.values()))),
        ("sagas", ", ".join(f"{n} {s}: {c}" for (n, s), c in sorted(outcomes.items()))),
        ("RSS after warm-up / at the end / peak", f"{rss} MiB"),
        ("open fds after warm-up / at the end / max per half", fds),
        ("median p50 / worst p99 per window", f"{p50:.1f} / {p99:.1f} ms"),
    ]
    print("\n| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nPASS" if not failed else "\nFAIL:\n- " + "\n- ".join(failed))


# -- orchestration ------------------------------------------------------------------------------


@dataclass
class Stack:
    upstream: subprocess.Popen[bytes]
    sidecar: subprocess.Popen[bytes]
    config: dict[str, Any]
    sidecar_log: Path


async def start_stack(workdir: Path, redis_url: str, pg_url: str) -> Stack:
    port = free_port()
    upstream = start_process([sys.executable, __file__, "upstream", str(port)], workdir / "up.log")
    config = write_config(workdir, f"http://127.0.0.1:{port}", redis_url, pg_url)
    log = workdir / "sidecar.log"
    command = [sys.executable, "-m", "proxy", "serve", "--config", str(workdir / "sidecar.yaml")]
    sidecar = start_process(command, log)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, f"http://127.0.0.1:{port}/items")
            await wait_ready(http, f"http://{config['admin']['listen']}/readyz")
    except SystemExit:
        stop(sidecar)
        stop(upstream)
        print(log.read_text(encoding="utf-8", errors="replace")[-3000:], file=sys.stderr)
        raise
    return Stack(upstream, sidecar, config, log)


async def soak(args: argparse.Namespace, stack: Stack) -> tuple[list[Sample], Tally]:
    tally, samples = Tally(), list[Sample]()
    until = time.monotonic() + args.duration
    url = f"http://{stack.config['listen']}"
    per_worker = args.rate / args.concurrency
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(
            sampler(stack.sidecar.pid, tally, args.interval, until, samples),
            *[worker(http, url, tally, per_worker, until) for _ in range(args.concurrency)],
        )
    return samples, tally


async def cleanup(redis_url: str, prefix: str, pg_dsn: str, schema: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


async def main(args: argparse.Namespace) -> int:
    redis_base = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    pg_dsn = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
    prefix, schema = f"soak-{uuid.uuid4().hex[:8]}", f"soak_{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in redis_base else "?"
    pg_sep = "&" if "?" in pg_dsn else "?"
    with tempfile.TemporaryDirectory(prefix="saga-sidecar-soak-") as tmp:
        stack = await start_stack(
            Path(tmp), f"{redis_base}{separator}prefix={prefix}", f"{pg_dsn}{pg_sep}schema={schema}"
        )
        try:
            print(f"soaking for {args.duration:g} s at {args.rate:g} requests/s", flush=True)
            samples, tally = await soak(args, stack)
            outcomes = await wait_sagas_done(pg_dsn, schema)
        finally:
            exit_code = stop(stack.sidecar)
            stop(stack.upstream)
        log = stack.sidecar_log.read_text(encoding="utf-8", errors="replace")
        await cleanup(redis_base, prefix, pg_dsn, schema)
    failed = checks(flatness(samples), tally, outcomes, log)
    if exit_code != 0:
        failed.append(f"the sidecar exited with {exit_code} on SIGTERM")
    report(args, samples, tally, outcomes, failed)
    return 0 if not failed else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (200)")
    parser.add_argument("--concurrency", type=int, default=32, help="client workers (32)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args(argv)
    if args.duration < args.interval * 10:
        parser.error("--duration must be at least 10 sampling intervals")
    return args


if __name__ == "__main__":
    if sys.argv[1:2] == ["upstream"]:
        run_upstream(int(sys.argv[2]))
    else:
        sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
