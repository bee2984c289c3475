"""``POST /reload`` on the admin listener: reload the config and saga files now (like SIGHUP).

It needs the admin token like every admin route but the probes. One process: the reload runs
before the answer, ``200`` with what changed (``applied``, ``not_reloaded``, ``sagas``) or
``422`` problem+json listing ``errors`` as ``FILE:LINE: message`` (nothing was changed).
With ``workers`` > 1 the supervising parent is sent SIGHUP and passes it to every worker, each
of which reloads on its own: ``202``, and the log and ``config_last_reload_successful`` say how
it went.
"""

from __future__ import annotations

import os
import signal

from aiohttp import web

from proxy.keys import RELOADER
from proxy.problems import problem_response

PROBLEM_TYPE = "urn:saga-sidecar:problem:reload-refused"


async def reload_now(request: web.Request) -> web.StreamResponse:
    """Reload this process (or, with workers, every worker) from the files."""
    reloader = request.app[RELOADER]
    if reloader.signal_parent:
        os.kill(os.getppid(), signal.SIGHUP)
        return web.json_response(
            {"reloaded": None, "detail": "every worker was signalled to reload; see the log"},
            status=202,
        )
    result = await reloader.reload("admin")
    if result.ok:
        return web.json_response(result.as_json())
    return problem_response(
        422,
        "the config or a saga file is invalid: nothing was reloaded",
        type_=PROBLEM_TYPE,
        errors=list(result.errors),
    )


def setup_reload_route(app: web.Application) -> None:
    """Add ``POST /reload``."""
    app.router.add_post("/reload", reload_now)
