"""``make profile``: where the sidecar's CPU goes under load, by py-spy sampling.

Starts the benchmark stack, drives one scenario (``PROFILE_SCENARIO``: ``get``, ``post``,
``miss``, ``replay``, ``storm`` or ``saga``; ``PROFILE_SECONDS``, default 10) with wrk and
samples the sidecar meanwhile. Writes the collapsed stacks (``flamegraph.pl`` or
speedscope read them) to the run directory and prints the functions with the most samples, by self
time and by total (inclusive) time.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.stack import VENV_BIN, Stack
from bench.wrk import run_wrk

TARGETS = {"saga": "saga-pg"}


def top(collapsed: Path, count: int = 30) -> str:
    """The functions with the most samples, by self and inclusive time, from collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        weight = int(n)
        samples += weight
        own[frames[-1]] += weight
        for frame in set(frames):
            total[frame] += weight
    lines = [f"{samples} samples", "", "self %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in own.most_common(count)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in total.most_common(count)]
    return "\n".join(lines)


def main() -> int:
    """Profile one scenario; print the top functions."""
    scenario = os.environ.get("PROFILE_SCENARIO", "get")
    seconds = float(os.environ.get("PROFILE_SECONDS", 10))
    rundir = Path(".run/bench") / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    rundir.mkdir(parents=True, exist_ok=True)
    stack = Stack(rundir.resolve(), int(os.environ.get("BENCH_WORKERS", 1)))
    try:
        stack.start(with_sagas=scenario == "saga")
        target = stack.targets[TARGETS.get(scenario, "sidecar")]
        run_wrk(scenario, target.port, 64, 1, "warm")
        collapsed = rundir / f"profile-{scenario}.txt"
        spy = subprocess.Popen(
            [str(VENV_BIN / "py-spy"), "record", "--pid", str(target.accounted["proxy"].pid),
             "--rate", "200", "--duration", f"{seconds:g}", "--subprocesses",
             "--format", "raw", "-o", str(collapsed)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        load = run_wrk(scenario, target.port, 32 if scenario == "saga" else 64, seconds, "prof")
        spy.wait()
        print(f"{scenario}: {load.rps:.0f} rps while sampled; collapsed stacks in {collapsed}")
        print(top(collapsed))
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
