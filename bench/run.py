"""``make bench``: run every scenario in alternating rounds and print the results table.

Environment: ``BENCH_QUICK=1`` (one short round, ~2 minutes), ``BENCH_ROUNDS``,
``BENCH_SECONDS`` (per loaded run), ``BENCH_WORKERS`` (sidecar processes, default 1),
``BENCH_ONLY`` (comma-separated scenario keys or prefixes, e.g. ``get,miss.redis``),
``BENCH_SERVER_CPUS`` / ``BENCH_LOAD_CPUS`` (taskset lists, default ``0`` / ``1``),
``BENCH_DATABASE_URL`` (else ``DATABASE_URL``, else the local PostgreSQL), ``BENCH_AIOHTTP_STEPS=1``
(one more PostgreSQL saga sidecar whose step calls use aiohttp's client: ``saga.pg-aiohttp``),
``BENCH_TRACING=1`` (one more pass-through sidecar with tracing on, exporting every span to a
local OTLP sink: ``get.traced``).
Results also go to ``.run/bench/<time>/results.json``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import extras, report
from bench.scenarios import SCENARIOS, Scenario, held_key
from bench.stack import Stack, Target
from bench.wrk import Load, run_wrk


@dataclass
class Settings:
    """How long and how often to measure."""

    rounds: int
    seconds: float
    unloaded_seconds: float
    workers: int
    only: tuple[str, ...]

    @classmethod
    def from_env(cls) -> Settings:
        quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
        only = tuple(p for p in os.environ.get("BENCH_ONLY", "").split(",") if p)
        return cls(
            rounds=int(os.environ.get("BENCH_ROUNDS", 1 if quick else 3)),
            seconds=float(os.environ.get("BENCH_SECONDS", 3 if quick else 5)),
            unloaded_seconds=2 if quick else 3,
            workers=int(os.environ.get("BENCH_WORKERS", 1)),
            only=only,
        )

    def wants(self, scenario: Scenario) -> bool:
        return not self.only or any(scenario.key.startswith(p) for p in self.only)


@dataclass
class Sample:
    """One scenario in one round."""

    loaded: Load
    cpu_us: dict[str, float]
    unloaded: Load | None = None


@dataclass
class Results:
    """Every sample, by scenario key, plus the one-off measurements."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


def measure(target: Target, scenario: Scenario, seconds: float, connections: int) -> Sample:
    """One wrk run with the CPU every accounted process spent on it, per request."""
    arg = uuid.uuid4().hex[:12]
    before = {name: proc.cpu_ns() for name, proc in target.accounted.items()}
    if scenario.holds_key:
        with held_key(target.port, arg):
            time.sleep(0.3)
            load = run_wrk(scenario.script, target.port, connections, seconds, arg)
    else:
        load = run_wrk(scenario.script, target.port, connections, seconds, arg)
    spent = {name: proc.cpu_ns() - before[name] for name, proc in target.accounted.items()}
    per_request = {name: ns / 1000 / max(load.requests, 1) for name, ns in spent.items()}
    extras.settle()
    return Sample(load, per_request)


def run_round(stack: Stack, settings: Settings, results: Results, seconds: float) -> None:
    """Every wanted scenario once, loaded then unloaded."""
    for scenario in SCENARIOS:
        target = stack.targets.get(scenario.target)
        if target is None or not settings.wants(scenario):
            continue
        sample = measure(target, scenario, seconds, scenario.connections)
        if scenario.unloaded and seconds >= 1:
            sample.unloaded = measure(target, scenario, settings.unloaded_seconds, 1).loaded
        results.samples.setdefault(scenario.key, []).append(sample)
        print(f"  {scenario.key:<14} {sample.loaded.rps:>9.0f} rps", file=sys.stderr, flush=True)


def one_offs(stack: Stack, results: Results) -> None:
    """RSS with 1,000 idle connections, and Redis memory per stored response."""
    sidecar = stack.targets["sidecar"]
    server = sidecar.accounted["proxy"]
    if hasattr(server, "rss_kib"):
        results.extra["rss"] = extras.idle_rss(server, sidecar.port)  # type: ignore[arg-type]
    results.extra["redis_record"] = extras.redis_record_bytes(stack.redis_url, "bench")


def commit() -> str:
    """The commit measured, marked ``+dirty`` when the work tree has changes under test."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "proxy", "saga_runner", "bench"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return head.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")


def main() -> int:
    """Run the benchmark; print the table; exit 1 when a floor fails."""
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    settings = Settings.from_env()
    rundir = Path(".run/bench") / time.strftime("%Y%m%d-%H%M%S")
    rundir.mkdir(parents=True, exist_ok=True)
    results = Results(extra={"commit": commit(), "load_start": extras.loadavg()})
    stack = Stack(rundir.resolve(), settings.workers)
    try:
        stack.start(
            with_sagas=any(settings.wants(s) for s in SCENARIOS if s.target.startswith("saga"))
        )
        print(f"warming up; results in {rundir}", file=sys.stderr)
        run_round(stack, settings, Results(), 1.0)
        for number in range(settings.rounds):
            print(f"round {number + 1}/{settings.rounds}", file=sys.stderr)
            run_round(stack, settings, results, settings.seconds)
        one_offs(stack, results)
    finally:
        stack.stop()
    results.extra["load_end"] = extras.loadavg()
    results.extra["settings"] = asdict(settings)
    (rundir / "results.json").write_text(json.dumps(asdict(results), indent=1, default=str))
    summary = report.summarize(results.samples, results.extra)
    print(report.render(summary, results.extra))
    return 0 if summary.floors_hold else 1


if __name__ == "__main__":
    sys.exit(main())
