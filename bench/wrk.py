"""Driving wrk: one load run pinned to the load core, parsed from the line ``bench/lua`` prints."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.procs import LOAD_CORE

LUA = Path(__file__).parent / "lua"


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int

    @property
    def rps(self) -> float:
        """Requests completed per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(script: str, port: int, connections: int, seconds: float, arg: str) -> Load:
    """Run ``bench/lua/<script>.lua`` against 127.0.0.1:``port``.

    Raises:
        RuntimeError: wrk failed or printed no result line.
    """
    argv = [
        "taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
        "--timeout", "10s", "-s", str(LUA / f"{script}.lua"), f"http://127.0.0.1:{port}", "--", arg,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=LUA.parent.parent, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    data = json.loads(line[6:])
    errors = sum(data[k] for k in ("connect", "read", "write", "timeout"))
    return Load(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        non_2xx=data["status"],
    )
