"""Run as a script by ``test_untraced``: an untraced sidecar, in a process of its own.

It imports every module of ``proxy`` and ``saga_runner`` except the OpenTelemetry side of
``proxy.tracing``, serves the public app (tracing off: no ``tracing`` section) in front of an
upstream that records the ``traceparent`` it gets, sends one request with a ``traceparent``,
and prints a JSON report: the status, what the upstream received, how the app was built, and
which tracing modules were imported (there must be none). (redis-py imports OpenTelemetry's
metrics API when it is installed, whatever the sidecar does: only the tracing SDK, the
exporter and the sidecar's own tracing modules are looked for.)
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

import proxy
import saga_runner
from proxy.app import build_apps
from proxy.config import LoadedConfig, SidecarConfig
from proxy.idempotency import IDEMPOTENCY_GUARD
from proxy.keys import FORWARDER

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
# The OpenTelemetry side, imported only when tracing is on; ``__main__`` would run the CLI.
SKIPPED_TRACING = {
    "proxy.tracing.export",
    "proxy.tracing.http",
    "proxy.tracing.otel",
    "proxy.tracing.sagas",
}
SKIPPED = {"proxy.__main__", *SKIPPED_TRACING}
TRACING_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter", *sorted(SKIPPED_TRACING))


def import_everything() -> None:
    for package in (proxy, saga_runner):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name not in SKIPPED:
                importlib.import_module(info.name)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def main(config_path: Path) -> dict[str, object]:
    received: list[list[str]] = []

    async def record(request: web.Request) -> web.Response:
        received.append(request.headers.getall("traceparent", []))
        return web.Response(text="ok")

    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", record)
    upstream_runner, upstream_url = await serve(upstream)
    config = SidecarConfig.model_validate({"upstream": {"url": upstream_url}})
    apps = build_apps(LoadedConfig(path=config_path, config=config))
    sidecar_runner, sidecar_url = await serve(apps.public)
    built = {
        "middlewares": len(apps.public.middlewares),
        "forwarder": type(apps.public[FORWARDER]).__name__,
        "decision": type(apps.public[IDEMPOTENCY_GUARD].decision(None)).__name__,
    }
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"{sidecar_url}/hello", headers={"traceparent": TRACEPARENT}) as response,
        ):
            status = response.status
    finally:
        await sidecar_runner.cleanup()
        await upstream_runner.cleanup()
    loaded = sorted(name for name in sys.modules if name.startswith(TRACING_MODULES))
    return {"status": status, "received": received, "built": built, "tracing_modules": loaded}


if __name__ == "__main__":
    import_everything()
    print(json.dumps(asyncio.run(main(Path("untraced.yaml").resolve()))))
