"""Processes under test: start them pinned to a core, wait for their port, account their CPU.

CPU time is read from ``/proc/PID/task/*/schedstat`` (nanoseconds on CPU, every thread) summed
over the process and its descendants, so a multi-process server (nginx, sidecar workers) is
counted whole. Memory is ``VmRSS`` summed the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER_CORE = os.environ.get("BENCH_SERVER_CPUS", "0")
LOAD_CORE = os.environ.get("BENCH_LOAD_CPUS", "1")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, seconds: float = 20.0) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {seconds:g}s")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def _task_ns(pid: int) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                total += int((task / "schedstat").read_text().split()[0])
    return total


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Server:
    """One server process (and its children) under test."""

    name: str
    argv: list[str]
    port: int
    logdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        """Start pinned to the server core(s); return once its port accepts."""
        log = (self.logdir / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *self.argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        try:
            wait_port(self.port)
        except RuntimeError:
            self.stop()
            tail = (self.logdir / f"{self.name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} did not start:\n{tail}") from None
        return self

    @property
    def pid(self) -> int:
        """The process id (of the top process)."""
        assert self.proc is not None
        return self.proc.pid

    def cpu_ns(self) -> int:
        """Nanoseconds on CPU so far, the whole process tree."""
        return sum(_task_ns(pid) for pid in process_tree(self.pid))

    def rss_kib(self) -> int:
        """Resident memory of the whole process tree, KiB."""
        return sum(_rss_kib(pid) for pid in process_tree(self.pid))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class External:
    """A server we did not start (measured only where its pid is known)."""

    name: str
    pid: int

    def cpu_ns(self) -> int:
        """Nanoseconds on CPU so far, the whole process tree."""
        return sum(_task_ns(pid) for pid in process_tree(self.pid))
