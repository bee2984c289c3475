"""The benchmark's OTLP collector stand-in: accepts every span batch and keeps nothing.

``POST /v1/traces`` reads the body and answers ``200`` with an empty (valid)
``ExportTraceServiceResponse``, so a traced sidecar (``BENCH_TRACING=1``, ``get.traced``)
exports as it would to a real collector.

Run: ``python -m bench.otlp_sink PORT``.
"""

from __future__ import annotations

import sys

from aiohttp import web


async def traces(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")


def main() -> None:
    """Serve on 127.0.0.1:PORT."""
    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
