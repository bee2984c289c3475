"""Turning samples into the results table, the ratios, and the issue's floors and goals."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bench.scenarios import SCENARIOS


class SampleLike(Protocol):
    """What report needs of ``run.Sample``."""

    loaded: Any
    cpu_us: dict[str, float]
    unloaded: Any


Samples = dict[str, list[Any]]
Metric = Callable[[Samples, int], float | None]


def _rps(key: str) -> Metric:
    return lambda s, i: s[key][i].loaded.rps if key in s and i < len(s[key]) else None


def _p50_1(key: str) -> Metric:
    def get(s: Samples, i: int) -> float | None:
        if key not in s or i >= len(s[key]) or s[key][i].unloaded is None:
            return None
        return float(s[key][i].unloaded.p50_ms)

    return get


def _ratio(a: Metric, b: Metric) -> Metric:
    def get(s: Samples, i: int) -> float | None:
        x, y = a(s, i), b(s, i)
        return None if x is None or not y else x / y

    return get


def _minus(a: Metric, b: Metric, times: float = 1.0) -> Metric:
    def get(s: Samples, i: int) -> float | None:
        x, y = a(s, i), b(s, i)
        return None if x is None or y is None else x - times * y

    return get


@dataclass(frozen=True)
class Target:
    """One line of the issue's targets table."""

    title: str
    metric: Metric | None
    floor: float
    goal: float
    higher_is_better: bool = True
    extra: Callable[[dict[str, Any]], float | None] | None = None
    fmt: str = "{:.2f}"


def _extra(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def get(extra: dict[str, Any]) -> float | None:
        value: Any = extra
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return None if value is None else float(value)

    return get


TARGETS = (
    Target(
        "pass-through GET rps ÷ minimal aiohttp proxy",
        _ratio(_rps("get.sidecar"), _rps("get.aiohttp")),
        1.0,
        1.5,
    ),
    Target(
        "pass-through POST rps ÷ minimal aiohttp proxy",
        _ratio(_rps("post.sidecar"), _rps("post.aiohttp")),
        1.0,
        1.5,
    ),
    Target(
        "idempotent miss (Redis) rps ÷ sidecar pass-through POST",
        _ratio(_rps("miss.redis"), _rps("post.sidecar")),
        0.5,
        0.75,
    ),
    Target(
        "replay rps ÷ sidecar pass-through POST",
        _ratio(_rps("replay.redis"), _rps("post.sidecar")),
        1.3,
        2.0,
    ),
    Target(
        "unloaded p50 added over direct, pass-through GET (ms)",
        _minus(_p50_1("get.sidecar"), _p50_1("get.direct")),
        0.35,
        0.2,
        False,
    ),
    Target(
        "unloaded p50 added over direct, pass-through POST (ms)",
        _minus(_p50_1("post.sidecar"), _p50_1("post.direct")),
        0.35,
        0.2,
        False,
    ),
    Target(
        "unloaded p50 added over direct, idempotent miss (ms)",
        _minus(_p50_1("miss.redis"), _p50_1("post.direct")),
        1.0,
        0.5,
        False,
    ),
    Target(
        "2-step sync saga on PostgreSQL, sagas/s at 32 concurrent",
        _rps("saga.pg"),
        250,
        500,
        fmt="{:.0f}",
    ),
    Target(
        "saga overhead beyond its 2 upstream calls, unloaded p50 (ms)",
        _minus(_p50_1("saga.pg"), _p50_1("post.direct"), 2),
        5,
        2,
        False,
    ),
    Target(
        "sidecar RSS with 1,000 idle keep-alive connections (MiB)",
        None,
        120,
        60,
        False,
        _extra("rss", "idle_conns_mib"),
        "{:.1f}",
    ),
    Target(
        "Redis MEMORY USAGE per stored 200-byte response (bytes)",
        None,
        1024,
        600,
        False,
        _extra("redis_record", "memory_usage"),
        "{:.0f}",
    ),
)


@dataclass(frozen=True)
class Checked:
    """A target with its measured value (median over rounds) and verdict."""

    target: Target
    value: float | None

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        t = self.target
        better = (lambda v, x: v >= x) if t.higher_is_better else (lambda v, x: v <= x)
        if better(self.value, t.goal):
            return "goal met"
        return "floor met" if better(self.value, t.floor) else "FLOOR MISSED"


@dataclass(frozen=True)
class Summary:
    """Median rows and checked targets."""

    rows: list[tuple[str, ...]]
    checked: list[Checked]

    @property
    def floors_hold(self) -> bool:
        return all(c.verdict != "FLOOR MISSED" for c in self.checked)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _row(title: str, samples: list[Any]) -> tuple[str, ...]:
    loaded = [s.loaded for s in samples]
    unloaded = [s.unloaded.p50_ms for s in samples if s.unloaded is not None]
    cpu = {k: statistics.median(s.cpu_us[k] for s in samples) for k in samples[0].cpu_us}
    p50_1 = f"{statistics.median(unloaded):.3f}" if unloaded else "-"
    return (
        title,
        f"{statistics.median(x.rps for x in loaded):,.0f}",
        f"{statistics.median(x.p50_ms for x in loaded):.2f}",
        f"{statistics.median(x.p99_ms for x in loaded):.2f}",
        p50_1,
        " / ".join(f"{k} {v:.0f}" for k, v in cpu.items()),
        str(sum(x.errors for x in loaded)),
        str(sum(x.non_2xx for x in loaded)),
    )


def summarize(samples: Samples, extra: dict[str, Any]) -> Summary:
    """Median per scenario, and every target as the median of its per-round values."""
    rows = [_row(s.title, samples[s.key]) for s in SCENARIOS if samples.get(s.key)]
    rounds = max((len(v) for v in samples.values()), default=0)
    checked = []
    for target in TARGETS:
        if target.metric is not None:
            value = _median([target.metric(samples, i) for i in range(rounds)])
        else:
            value = target.extra(extra) if target.extra else None
        checked.append(Checked(target, value))
    return Summary(rows, checked)


HEADER = (
    "scenario", "rps", "p50 ms", "p99 ms", "p50 ms @1 conn",
    "CPU µs/request per process", "socket errors", "non-2xx",
)  # fmt: skip


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(summary: Summary, extra: dict[str, Any]) -> str:
    """The Markdown printed at the end of ``make bench`` (pasted into docs/BENCHMARKS.md)."""
    settings = extra.get("settings", {})
    head = (
        f"commit {extra.get('commit')}, {settings.get('rounds')} round(s) of "
        f"{settings.get('seconds')} s, workers {settings.get('workers')}, "
        f"load average {extra.get('load_start')} → {extra.get('load_end')}"
    )
    targets = [
        (
            c.target.title,
            "-" if c.value is None else c.target.fmt.format(c.value),
            ("≥ " if c.target.higher_is_better else "≤ ")
            + f"{c.target.floor:g} / {c.target.goal:g}",
            c.verdict,
        )
        for c in summary.checked
    ]
    return "\n\n".join(
        (
            head,
            _table(HEADER, summary.rows),
            _table(("target", "measured", "floor / goal", "verdict"), targets),
            f"RSS: {extra.get('rss')}; Redis record: {extra.get('redis_record')}",
        )
    )
