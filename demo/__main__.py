"""Run the demo services: shop on :3000, orders on :3001, payments on :3002, the payment gateway
on :3003 (127.0.0.1)."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from demo.gateway import gateway_app
from demo.services import orders_app, payments_app, shop_app


async def main() -> None:
    """Serve the four demo apps until interrupted."""
    host = os.environ.get("DEMO_HOST", "127.0.0.1")
    runners = []
    apps = (
        (shop_app(), 3000),
        (orders_app(), 3001),
        (payments_app(), 3002),
        (gateway_app(), 3003),
    )
    for app, port in apps:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    print(
        f"demo services on {host}: shop :3000, orders :3001, payments :3002, gateway :3003",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
