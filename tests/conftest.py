"""Shared pytest fixtures: free ports, real upstream apps, a ``saga-sidecar serve`` subprocess.

Everything here runs for real: upstream apps are aiohttp servers bound to 127.0.0.1 on a random
port, and the sidecar is ``sys.executable -m proxy serve --config FILE`` in a subprocess whose
config is written to a temporary YAML file. Store URLs come from ``REDIS_URL`` / ``DATABASE_URL``
when set, else the servers on 127.0.0.1.

Fixtures:
    free_port            ``free_port() -> int``: a TCP port nobody listens on right now.
    upstream_server      ``await upstream_server(app) -> Upstream``: an app in the test's loop.
    app_in_thread        ``app_in_thread(app) -> Upstream``: an app in its own thread and loop,
                         usable from module-scoped fixtures (stopped at session end).
    background_loop      the ``AppThread`` behind it; ``background_loop.run(coro)`` runs any
                         coroutine (a raw asyncio server, say) on that loop.
    sidecar_process      ``sidecar_process(config) -> Sidecar``: a sidecar subprocess, stopped
                         at the end of the test. ``module_sidecar_process``: same, module scope.
    redis_url / database_url    the store URLs tests must use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
SIDECAR_START_TIMEOUT = 15.0
SIDECAR_STOP_TIMEOUT = 15.0
T = TypeVar("T")


def env_redis_url() -> str:
    """The Redis URL tests use: ``$REDIS_URL`` or the server on 127.0.0.1:6379."""
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def env_database_url() -> str:
    """The PostgreSQL URL tests use: ``$DATABASE_URL`` or the server on 127.0.0.1:5432."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Upstream:
    """A real aiohttp app listening on 127.0.0.1."""

    app: web.Application
    port: int
    stop: Callable[[], Any] = field(repr=False)

    @property
    def url(self) -> str:
        """Base URL of the app, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"


async def start_app(app: web.Application, **runner_kwargs: Any) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 on a kernel-chosen port; return the runner and the port.

    Unless ``runner_kwargs`` say otherwise, cleanup waits at most 1 s for handlers still running.
    """
    runner_kwargs.setdefault("shutdown_timeout", 1.0)
    runner = web.AppRunner(app, access_log=None, **runner_kwargs)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


class AppThread:
    """Runs aiohttp apps in one background thread with its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def start(self, app: web.Application, **runner_kwargs: Any) -> Upstream:
        """Serve ``app`` from the thread; returns once it listens."""
        future = asyncio.run_coroutine_threadsafe(start_app(app, **runner_kwargs), self.loop)
        runner, port = future.result(timeout=10)
        self._runners.append(runner)
        return Upstream(app, port, stop=lambda: self._stop(runner))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the background loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def _stop(self, runner: web.AppRunner) -> None:
        if runner in self._runners:
            self._runners.remove(runner)
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(timeout=10)

    def close(self) -> None:
        """Stop every app, then the loop and the thread."""
        for runner in list(self._runners):
            self._stop(runner)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class Sidecar:
    """A running ``saga-sidecar serve`` subprocess."""

    process: subprocess.Popen[bytes]
    url: str
    admin_url: str
    config_path: Path
    log_path: Path
    config: dict[str, Any]

    @property
    def pid(self) -> int:
        """The subprocess's process id."""
        return self.process.pid

    def _proc_status_kib(self, name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {name} in /proc/{self.pid}/status")

    def rss_bytes(self) -> int:
        """Resident memory of the subprocess now (``VmRSS`` from /proc)."""
        return self._proc_status_kib("VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of the subprocess so far (``VmHWM`` from /proc)."""
        return self._proc_status_kib("VmHWM") * 1024

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (non-JSON lines are skipped)."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the subprocess."""
        self.process.send_signal(signum)

    def stop(self, timeout: float = SIDECAR_STOP_TIMEOUT) -> int:
        """SIGTERM the process (SIGKILL after ``timeout``) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class SidecarLauncher:
    """Starts sidecar subprocesses from config dicts and stops them all at ``close``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started: list[Sidecar] = []

    def base_config(self) -> dict[str, Any]:
        """Fresh ports, JSON logs, a short shutdown grace."""
        return {
            "listen": f"127.0.0.1:{find_free_port()}",
            "shutdown_grace": "5s",
            "admin": {"listen": f"127.0.0.1:{find_free_port()}"},
            "log": {"format": "json", "level": "info"},
        }

    def start(self, config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Sidecar:
        """Write ``config`` (merged over ``base_config``) and run ``serve`` until /healthz is 200.

        Args:
            config: sidecar config; must at least hold ``upstream.url``.
            env: extra environment variables for the subprocess.
        """
        full = deep_merge(self.base_config(), config)
        name = f"sidecar-{len(self._started)}"
        config_path = self.workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--config", str(config_path)],
                cwd=REPO_ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        sidecar = Sidecar(
            process=process,
            url=f"http://{full['listen']}",
            admin_url=f"http://{full['admin']['listen']}",
            config_path=config_path,
            log_path=log_path,
            config=full,
        )
        self._started.append(sidecar)
        self._wait_healthy(sidecar)
        return sidecar

    def _wait_healthy(self, sidecar: Sidecar) -> None:
        deadline = time.monotonic() + SIDECAR_START_TIMEOUT
        while time.monotonic() < deadline:
            if sidecar.process.poll() is not None:
                raise RuntimeError(
                    f"sidecar exited with {sidecar.process.returncode}:\n{sidecar.log_text()}"
                )
            if _get_status(f"{sidecar.admin_url}/healthz") == 200:
                return
            time.sleep(0.05)
        sidecar.stop()
        raise RuntimeError(
            f"sidecar not healthy in {SIDECAR_START_TIMEOUT}s:\n{sidecar.log_text()}"
        )

    def close(self) -> None:
        """Stop every sidecar this launcher started."""
        for sidecar in self._started:
            sidecar.stop()


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()`` returns a TCP port on 127.0.0.1 nothing listens on right now."""
    return find_free_port


@pytest.fixture
async def upstream_server() -> AsyncIterator[Callable[..., Any]]:
    """``await upstream_server(app)`` serves ``app`` in the test's loop; cleaned up after."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, **runner_kwargs: Any) -> Upstream:
        runner, port = await start_app(app, **runner_kwargs)
        runners.append(runner)
        return Upstream(app, port, stop=runner.cleanup)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture(scope="session")
def background_loop() -> Iterator[AppThread]:
    """One event loop in a background thread for the whole session."""
    thread = AppThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def app_in_thread(background_loop: AppThread) -> Callable[..., Upstream]:
    """``app_in_thread(app)`` serves ``app`` from the background loop (any fixture scope)."""
    return background_loop.start


@pytest.fixture
def sidecar_process(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """``sidecar_process(config, env=None)`` runs ``saga-sidecar serve``; stopped after the test."""
    launcher = SidecarLauncher(tmp_path)
    yield launcher.start
    launcher.close()


@pytest.fixture(scope="module")
def module_sidecar_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Sidecar]]:
    """Like ``sidecar_process`` but the sidecars live until the end of the test module."""
    launcher = SidecarLauncher(tmp_path_factory.mktemp("sidecar"))
    yield launcher.start
    launcher.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server tests use (``$REDIS_URL`` or redis://127.0.0.1:6379/0)."""
    return env_redis_url()


@pytest.fixture(scope="session")
def database_url() -> str:
    """The PostgreSQL server tests use (``$DATABASE_URL`` or 127.0.0.1:5432, db test)."""
    return env_database_url()


@pytest.fixture(scope="session")
def pg_session_schema(database_url: str) -> Iterator[Any]:
    """A migrated PostgreSQL saga schema shared by this test session, dropped at the end.

    Tests that use it empty it first (``Target.truncate``); one schema per session keeps
    PostgreSQL runs fast and leaves nothing behind.
    """
    from saga_store.helpers import Target, new_schema, run_in_thread

    target = Target.postgres(database_url, new_schema())
    try:
        run_in_thread(target.migrate())
        yield target
    finally:
        run_in_thread(target.drop())


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which saga store the test runs against (every saga-store test runs on both)."""
    name: str = request.param
    return name
