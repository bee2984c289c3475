"""``workers: N``: N processes sharing the public listener through SO_REUSEPORT.

The parent forks the workers before any event loop exists and then only supervises: it forwards
SIGTERM/SIGINT to every worker (each drains its own in-flight requests within
``shutdown_grace``), waits for them, and exits 0 when they all did. It forwards SIGHUP too: each
worker reloads the config and saga files on its own (``proxy.reload``). A worker that exits on
its own (a crash, a port it cannot bind) stops the others and the parent exits 1, so the
orchestrator restarts the whole pod instead of running on with fewer processes than configured.

Every worker binds the public address with SO_REUSEPORT and the kernel spreads connections over
them. Only worker 0 binds the admin address (probes, saga API, dashboard, ``/metrics``); the
others serve their own metrics on a Unix socket in a private runtime directory, and worker 0's
``/metrics`` is the sum of every worker's, so a scrape counts every request of the pod once.
Gauges that describe the shared saga store rather than one process (``STORE_GAUGES``), and those
every worker reports alike (``ALIKE_GAUGES``: the release, the Python, a per-process limit, a
start time) are the maximum instead of the sum; so ``process_*`` CPU, memory and open files are
the pod's. The reload gauges (``POD_MIN_GAUGES``) are the minimum: the pod runs the reloaded
files only when every worker does. Each worker runs its own saga recovery loop; sagas are
leased, so workers share the backlog as replicas do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from proxy.admin.listener import metrics as local_metrics
from proxy.keys import METRICS

log = logging.getLogger("saga_sidecar.workers")

STORE_GAUGES = frozenset({"saga_oldest_unfinished_age_seconds", "saga_waiting"})
ALIKE_GAUGES = frozenset(
    {"saga_sidecar_build_info", "python_info", "process_max_fds", "process_start_time_seconds"}
)
_MAXIMA = STORE_GAUGES | ALIKE_GAUGES
# Gauges of the pod's least up-to-date worker: the pod runs the reloaded files only when every
# worker does.
POD_MIN_GAUGES = frozenset(
    {"config_last_reload_success_timestamp_seconds", "config_last_reload_successful"}
)
_SCRAPE_TIMEOUT = 2.0
_KILL_MARGIN = 10.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class WorkerSlot:
    """Which worker this process is, and where the workers find each other's metrics."""

    index: int
    count: int
    runtime_dir: Path

    @property
    def serves_admin(self) -> bool:
        """Worker 0 serves the admin listener for the whole pod."""
        return self.index == 0

    def metrics_socket(self, index: int) -> Path:
        """The Unix socket on which worker ``index`` serves its own metrics."""
        return self.runtime_dir / f"metrics-{index}.sock"


def merge_expositions(texts: Iterable[str]) -> bytes:
    """Several Prometheus text expositions as one: samples summed (``STORE_GAUGES`` and
    ``ALIKE_GAUGES``: maximum; ``POD_MIN_GAUGES``: minimum)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            merged = values.setdefault(family.name, {})
            combine = _combine(family.name)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = merged.get(key)
                merged[key] = sample.value if seen is None else combine(seen, sample.value)
    for name, family in families.items():
        family.samples = [
            Sample(sample, dict(labels), value) for (sample, labels), value in values[name].items()
        ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


def _combine(name: str) -> Callable[[float, float], float]:
    if name in _MAXIMA:
        return max
    return min if name in POD_MIN_GAUGES else _add


def _add(a: float, b: float) -> float:
    return a + b


class _Fixed:
    """A collector that yields metric families it was given."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


async def _scrape(socket_path: Path) -> str | None:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    timeout = aiohttp.ClientTimeout(total=_SCRAPE_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get("http://worker/metrics") as response,
        ):
            return await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("worker metrics at %s not readable: %s", socket_path, exc)
        return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def pod_metrics_middleware(slot: WorkerSlot) -> Any:
    """Worker 0's admin middleware: ``GET /metrics`` answers the sum over every worker."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/metrics" or request.method != "GET":
            return await handler(request)
        own = generate_latest(request.app[METRICS].registry).decode()
        others = [await _scrape(slot.metrics_socket(i)) for i in range(1, slot.count)]
        response = web.Response(body=merge_expositions([own, *(t for t in others if t)]))
        response.content_type = "text/plain"
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    return middleware


def metrics_app(metrics_source: web.Application) -> web.Application:
    """A worker's own-metrics app (served on its Unix socket for worker 0 to sum)."""
    app = web.Application()
    app[METRICS] = metrics_source[METRICS]
    app.router.add_get("/metrics", local_metrics)
    return app


# -- the supervising parent ---------------------------------------------------------------------


@contextlib.contextmanager
def _runtime_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="saga-sidecar-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fork_worker(slot: WorkerSlot, serve: Callable[[WorkerSlot], int]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # Until the worker's loop handles it, a SIGHUP must not end the worker (its default).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        code = serve(slot)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker %d failed", slot.index)
    finally:
        logging.shutdown()  # flushes lines still pending in the batching handler
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Supervisor:
    """Forks the workers, forwards stop signals, and reaps them (see the module docstring)."""

    def __init__(self, count: int, grace: float) -> None:
        self.count = count
        self.grace = grace
        self.children: dict[int, int] = {}
        self.stopping_since: float | None = None
        self.failed = False
        self.reload_wanted = False

    def run(self, serve: Callable[[WorkerSlot], int]) -> int:
        """Run ``count`` workers, each ``serve(slot)``, until they have all exited."""
        with _runtime_dir() as runtime:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_reload)
            for index in range(self.count):
                slot = WorkerSlot(index, self.count, runtime)
                self.children[_fork_worker(slot, serve)] = index
            log.info("started %d workers", self.count, extra={"pids": sorted(self.children)})
            while self.children:
                self._reap()
                self._pass_reload()
                self._enforce_deadline()
                time.sleep(0.1)
        return 1 if self.failed else 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_wanted = True  # passed on by the supervising loop, which may log

    def _pass_reload(self) -> None:
        if not self.reload_wanted or self.stopping_since is not None:
            return
        self.reload_wanted = False
        log.info("SIGHUP: every worker reloads", extra={"pids": sorted(self.children)})
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    def stop(self) -> None:
        """Ask every worker to drain and exit."""
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            index = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping_since is None or code != 0:
                log.error("worker %d (pid %d) exited with %d", index, pid, code)
                self.failed = True
            if self.stopping_since is None:
                self.stop()

    def _enforce_deadline(self) -> None:
        if self.stopping_since is None:
            return
        if time.monotonic() - self.stopping_since > self.grace + _KILL_MARGIN:
            for pid in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.failed = True
