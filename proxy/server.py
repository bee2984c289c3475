"""Process lifecycle: start both listeners, wait for SIGTERM/SIGINT, drain, clean up, exit 0.

On a stop signal the public listener stops accepting at once, in-flight requests get up to
``shutdown_grace`` to finish, tracked background tasks are drained, then stores and pools close.
SIGHUP (and, with ``reload.watch``, a change of the files) reloads the config and the saga
files (``proxy.reload``).
With ``workers`` > 1 this runs in every worker process (``proxy.workers``): all bind the public
address with SO_REUSEPORT, worker 0 alone binds the admin address, and the others serve their
metrics on a Unix socket that worker 0's ``/metrics`` sums.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial

from aiohttp import web

from proxy.app import build_apps
from proxy.config import LoadedConfig, split_hostport
from proxy.keys import READINESS, RELOADER
from proxy.limits import LimitedAppRunner
from proxy.reload import watch
from proxy.workers import WorkerSlot, metrics_app, pod_metrics_middleware

log = logging.getLogger("saga_sidecar.server")


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def start_site(
    runner: web.AppRunner, listen: str, *, reuse_port: bool = False
) -> web.TCPSite:
    """Set up ``runner`` and bind it to ``host:port``.

    Raises:
        SystemExit: the address cannot be bound (in use, not local, no permission).
    """
    await runner.setup()
    host, port = split_hostport(listen)
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        raise SystemExit(f"saga-sidecar: cannot listen on {listen}: {exc.strerror or exc}") from exc
    return site


async def serve(
    loaded: LoadedConfig, stop: asyncio.Event | None = None, worker: WorkerSlot | None = None
) -> None:
    """Run the public and admin listeners until ``stop`` is set or a stop signal arrives.

    Args:
        loaded: the configuration.
        stop: set it to stop (stop signals set it too).
        worker: this process's place among ``workers`` > 1 (None: the only process).
    """
    config = loaded.config
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    apps = build_apps(loaded, signal_parent=worker is not None)
    reloader = apps.public[RELOADER]
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
    public = LimitedAppRunner(
        apps.public,
        read_timeout=config.limits.read_timeout,
        # aiohttp waits for a running handler twice (before and after cancelling its payload),
        # each time up to shutdown_timeout: halves keep the whole drain within the grace.
        shutdown_timeout=config.shutdown_grace / 2,
        access_log=None,
        # A proxy relays request bodies as sent: aiohttp would otherwise inflate gzip/deflate
        # bodies and forward them still labelled Content-Encoding, with the old length.
        auto_decompress=False,
    )
    if worker is not None and worker.serves_admin:
        apps.admin.middlewares.append(pod_metrics_middleware(worker))
    admin_app = apps.admin if worker is None or worker.serves_admin else metrics_app(apps.public)
    # The admin listener gets the public one's head limits too: 431/408 as problems, and no
    # client may hold a connection open by trickling a request head.
    admin = LimitedAppRunner(
        admin_app, read_timeout=config.limits.read_timeout, shutdown_timeout=2.0, access_log=None
    )
    reloading: list[asyncio.Task[None]] = []
    try:
        await start_site(public, config.listen, reuse_port=worker is not None)
        if worker is None or worker.serves_admin:
            await start_site(admin, config.admin.listen)
        else:
            await admin.setup()
            await web.UnixSite(admin, str(worker.metrics_socket(worker.index))).start()
        admin_listen = config.admin.listen if worker is None or worker.serves_admin else None
        where = {"listen": config.listen, "admin": admin_listen}
        log.info("listening", extra=where | ({"worker": worker.index} if worker else {}))
        # A SIGHUP that came during start is acted on now, with everything open.
        reloading.append(asyncio.create_task(reloader.run()))
        if config.reload.watch:
            changed = partial(reloader.request, "watch")
            reloading.append(
                asyncio.create_task(watch(reloader.live, config.reload.interval, changed))
            )
        await stop.wait()
        apps.public[READINESS].mark_draining()
        log.info("stop signal received, draining", extra={"grace_s": config.shutdown_grace})
    finally:
        for task in reloading:
            task.cancel()
        await asyncio.gather(*reloading, return_exceptions=True)
        await public.cleanup()
        await admin.cleanup()
    log.info("stopped")
