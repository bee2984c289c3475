"""``saga-sidecar`` with its saga step calls on aiohttp's client, for the step-client A/B.

``BENCH_AIOHTTP_STEPS=1 make bench`` starts one more PostgreSQL saga sidecar through this module
(scenario ``saga.pg-aiohttp``): the same program, except that step calls go through
``saga_runner.transport.AiohttpTransport`` instead of the proxy's lean ``UpstreamStepTransport``.
"""

from __future__ import annotations

import sys

import proxy.sagas.service
from proxy.cli import main
from saga_runner.transport import AiohttpTransport

proxy.sagas.service.UpstreamStepTransport = AiohttpTransport  # type: ignore[misc,assignment]

if __name__ == "__main__":
    sys.exit(main())
