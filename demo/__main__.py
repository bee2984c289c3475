"""Run the demo services: shop on :3000, orders on :3001, payments on :3002 (127.0.0.1)."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from demo.services import orders_app, payments_app, shop_app


async def main() -> None:
    """Serve the three demo apps until interrupted."""
    host = os.environ.get("DEMO_HOST", "127.0.0.1")
    runners = []
    for app, port in ((shop_app(), 3000), (orders_app(), 3001), (payments_app(), 3002)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    print(f"demo services on {host}: shop :3000, orders :3001, payments :3002", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
