"""The servers one ``make bench`` run starts: upstream, Redis, baselines and sidecar variants.

Every server runs pinned to the server core(s) (``BENCH_SERVER_CPUS``, default ``0``); the load
generator runs on the load core(s) (``BENCH_LOAD_CPUS``, default ``1``). Redis is a private
``redis-server`` on a free port, so other users of the machine's Redis do not disturb the
figures; PostgreSQL is ``BENCH_DATABASE_URL`` / ``DATABASE_URL`` (default the local server) with
a fresh schema dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import External, Server, free_port

BENCH_DIR = Path(__file__).parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Target:
    """Something wrk can be pointed at, and the processes whose CPU a request there costs."""

    name: str
    port: int
    accounted: dict[str, Server | External] = field(default_factory=dict)


def sidecar_yaml(
    ports: dict[str, int], store: str, workers: int, sagas: str | None, tracing: str | None = None
) -> str:
    """A sidecar config for the benchmark (defaults everywhere else, JSON access log on);
    ``tracing`` is an OTLP endpoint to export spans to."""
    upstream = f"http://127.0.0.1:{ports['upstream']}"
    text = f"""listen: "127.0.0.1:{ports["public"]}"
workers: {workers}
shutdown_grace: 3s
admin: {{listen: "127.0.0.1:{ports["admin"]}"}}
upstream: {{url: "{upstream}"}}
services: {{orders: "{upstream}", payments: "{upstream}"}}
idempotency: {{store: "{store}"}}
log: {{format: json, level: info}}
"""
    if sagas:
        text += f'sagas: {{store: "{sagas}", definitions: ["{BENCH_DIR / "saga"}/*.yaml"]}}\n'
    if tracing:
        text += f'tracing: {{endpoint: "{tracing}"}}\n'
    return text


class Stack:
    """Starts, tracks and stops every server of one run."""

    def __init__(self, rundir: Path, workers: int) -> None:
        self.rundir = rundir
        self.workers = workers
        self.servers: list[Server] = []
        self.targets: dict[str, Target] = {}
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        self.database_url = os.environ.get(
            "BENCH_DATABASE_URL", os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
        )
        self.redis: Server | None = None
        self.upstream: Server | None = None

    def _start(self, name: str, argv: list[str], port: int) -> Server:
        server = Server(name, argv, port, self.rundir).start()
        self.servers.append(server)
        return server

    def start(self, with_sagas: bool = True) -> None:
        """Start everything (nginx only when installed)."""
        port = free_port()
        self.redis = self._start(
            "redis",
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.rundir)],
            port,
        )  # fmt: skip
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        port = free_port()
        self.upstream = self._start(
            "upstream", [sys.executable, "-m", "bench.upstream", str(port)], port
        )
        self.targets["direct"] = Target("direct", port, {"upstream": self.upstream})
        self._baselines()
        self._sidecar("sidecar", f"{self.redis_url}?prefix=bench", self.workers)
        self._sidecar("sidecar-memory", "memory://", 1)
        if os.environ.get("BENCH_TRACING", "") not in ("", "0"):
            self._traced_sidecar()
        if with_sagas:
            pg = (
                f"{self.database_url}{'&' if '?' in self.database_url else '?'}schema={self.schema}"
            )
            self._sidecar("saga-pg", f"{self.redis_url}?prefix=saga", self.workers, pg)
            if os.environ.get("BENCH_AIOHTTP_STEPS", "") not in ("", "0"):
                self._sidecar(
                    "saga-pg-aiohttp",
                    f"{self.redis_url}?prefix=saga-aiohttp",
                    self.workers,
                    pg,
                    [sys.executable, "-m", "bench.aiohttp_steps"],
                )
            sqlite = f"sqlite:///{self.rundir / 'sagas.db'}"
            self._sidecar("saga-sqlite", "memory://", 1, sqlite)

    def _accounted(self, proxy: Server, redis: bool = False) -> dict[str, Server | External]:
        assert self.upstream is not None and self.redis is not None
        found: dict[str, Server | External] = {"proxy": proxy, "upstream": self.upstream}
        if redis:
            found["redis"] = self.redis
        return found

    def _baselines(self) -> None:
        assert self.upstream is not None
        port = free_port()
        argv = [sys.executable, "-m", "bench.baselines.aiohttp_proxy", str(port)]
        proxy = self._start(
            "aiohttp-proxy", [*argv, f"http://127.0.0.1:{self.upstream.port}"], port
        )
        self.targets["aiohttp"] = Target("aiohttp", port, self._accounted(proxy))
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if nginx is None:
            return
        port = free_port()
        conf = (BENCH_DIR / "baselines" / "nginx.conf").read_text()
        for name, value in (
            ("PORT", port),
            ("UPSTREAM_PORT", self.upstream.port),
            ("DIR", self.rundir),
        ):
            conf = conf.replace(f"@{name}@", str(value))
        (self.rundir / "nginx.conf").write_text(conf)
        server = self._start("nginx", [nginx, "-c", str(self.rundir / "nginx.conf")], port)
        self.targets["nginx"] = Target("nginx", port, self._accounted(server))

    def _sidecar(
        self,
        name: str,
        store: str,
        workers: int,
        sagas: str | None = None,
        program: list[str] | None = None,
        tracing: str | None = None,
    ) -> None:
        """A sidecar target; ``program`` replaces the ``saga-sidecar`` executable."""
        assert self.upstream is not None
        ports = {"public": free_port(), "admin": free_port(), "upstream": self.upstream.port}
        config = self.rundir / f"{name}.yaml"
        config.write_text(sidecar_yaml(ports, store, workers, sagas, tracing))
        program = program or [str(VENV_BIN / "saga-sidecar")]
        argv = [*program, "serve", "--config", str(config)]
        server = self._start(name, argv, ports["public"])
        self.targets[name] = Target(
            name, ports["public"], self._accounted(server, "redis:" in store)
        )

    def _traced_sidecar(self) -> None:
        """``sidecar-traced``: the pass-through sidecar exporting its spans to an OTLP sink."""
        port = free_port()
        self._start("otlp-sink", [sys.executable, "-m", "bench.otlp_sink", str(port)], port)
        endpoint = f"http://127.0.0.1:{port}"
        self._sidecar("sidecar-traced", f"{self.redis_url}?prefix=traced", 1, tracing=endpoint)

    def stop(self) -> None:
        """Stop every server (sidecars first) and drop the benchmark's PostgreSQL schema."""
        for server in reversed(self.servers):
            server.stop()
        if "saga-pg" in self.targets:
            asyncio.run(self._drop_schema())

    async def _drop_schema(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.database_url.split("?")[0])
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()
