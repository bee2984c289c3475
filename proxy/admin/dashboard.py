"""The saga dashboard (``GET /dashboard``): server-rendered HTML, one inline script, no CDN.

``/dashboard`` shows how many sagas are in each status and a filterable, paged list (``status``,
``name``, ``business_id``, ``limit``, ``before``, as in ``GET /sagas``);
``/dashboard/sagas/{id}`` (or ``/dashboard?saga=<id>``) shows one saga's facts, its step timeline
with every attempt, its events, input and stored response. The page layout is
``templates/dashboard.html`` with ``templates/dashboard.css`` and ``templates/dashboard.js``
inlined; a strict Content-Security-Policy allows that one stylesheet and that one script (by
hash), and fetches to this origin only, so even markup that slipped past escaping could not run
script or load anything. The page works without the script; with it, the page refreshes itself
(``?refresh=N`` seconds, default 5, 0 starts paused; a checkbox pauses it) and a saga's Retry
and Abort buttons POST to the saga API. Like the saga API, it is behind ``admin.token``: the
page and its script's requests carry whatever the browser sends (an authenticating proxy adding
``Authorization``), never a token written into the page.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from string import Template
from typing import Final

from aiohttp import web

from proxy.admin import dashboard_html as fragments
from proxy.admin.sagas_api import LIST_PARAMS, list_query, saga_operations
from proxy.errors import RuntimeUnavailable
from saga_runner import offload
from saga_runner.errors import OperatorInputError, SagaNotFound, StoreError
from saga_runner.operations import SagaOperations
from saga_runner.records import SagaInstance
from saga_runner.views import catalog_step_names, detail_view, page_view

DASHBOARD_PARAMS: Final = (*LIST_PARAMS, "saga", "refresh")

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _digest(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@cache
def _assets() -> tuple[Template, str, str, str]:
    """The page template, the stylesheet, the script, and the CSP allowing exactly those two."""
    folder = resources.files("proxy.admin") / "templates"
    page = Template(folder.joinpath("dashboard.html").read_text(encoding="utf-8"))
    style = folder.joinpath("dashboard.css").read_text(encoding="utf-8")
    script = folder.joinpath("dashboard.js").read_text(encoding="utf-8")
    csp = (
        f"default-src 'none'; style-src 'sha256-{_digest(style)}'; "
        f"script-src 'sha256-{_digest(script)}'; connect-src 'self'; img-src 'self' data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return page, style, script, csp


def html_page(title: str, body: str, status: int = 200) -> web.Response:
    """A whole dashboard page around ``body`` (already-escaped HTML), with safe headers."""
    page, style, script, csp = _assets()
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = page.substitute(
        title=fragments.esc(title),
        style=style,
        script=script,
        generated=fragments.esc(generated),
        body=body,
    )
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def notice_page(status: int, title: str, message: str) -> web.Response:
    """An error page: what went wrong, and a way back to the list."""
    body = (
        f'<h1>{fragments.esc(title)}</h1><p class="notice">{fragments.esc(message)}</p>'
        f'<p><a href="{fragments.DASHBOARD_PATH}">&larr; all sagas</a></p>'
    )
    return html_page(title, body, status)


def html_errors(handler: Handler) -> Handler:
    """Answer the saga operations' exceptions with an HTML error page."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except OperatorInputError as exc:
            return notice_page(400, "Bad filter", str(exc))
        except SagaNotFound as exc:
            return notice_page(404, "Saga not found", str(exc))
        except (StoreError, RuntimeUnavailable) as exc:
            return notice_page(503, "Saga store unavailable", str(exc))

    return wrapped


def _step_names(operations: SagaOperations, items: tuple[SagaInstance, ...]) -> dict[str, str]:
    """Each saga's current step as ``#N name`` (the name when its definition is loaded)."""
    names = {}
    for saga in items:
        if saga.current_step is None:
            continue
        definition = operations.runtime.catalog.by_hash.get(saga.definition_hash)
        order = saga.current_step
        if definition is not None and 0 <= order < len(definition.all_steps):
            names[saga.id] = f"#{order} {definition.all_steps[order].name}"
        else:
            names[saga.id] = f"#{order}"
    return names


@html_errors
async def dashboard(request: web.Request) -> web.Response:
    """``GET /dashboard``: counts by status and the filtered list (or one saga with ``?saga=``)."""
    query = list_query(request, DASHBOARD_PARAMS)
    saga_id = request.query.get("saga")
    if saga_id:
        return await _saga_page(request, saga_id)
    operations = saga_operations(request.app)
    counts = await operations.counts()
    page = await operations.list(query)
    view = page_view(page, catalog_step_names(operations.runtime.catalog))
    names = [d.name for d in operations.runtime.catalog]
    body = (
        "<h1>Sagas</h1>"
        + fragments.counts_bar(counts, query)
        + fragments.filter_form(query, [*names, *(s.name for s in page.items)])
        + fragments.saga_rows(view["items"], _step_names(operations, page.items))
        + fragments.pager(query, view["next_cursor"])
    )
    return html_page("Sagas", body)


@html_errors
async def dashboard_saga(request: web.Request) -> web.Response:
    """``GET /dashboard/sagas/{id}``: one saga's step timeline."""
    return await _saga_page(request, request.match_info["saga_id"])


async def _saga_page(request: web.Request, saga_id: str) -> web.Response:
    operations = saga_operations(request.app)
    detail = await operations.show(saga_id)
    # Redacting a saga with a large input takes long: off the loop, as its trigger did.
    view = await offload.off_loop(detail_view, detail, operations.redact)
    return html_page(f"Saga {detail.instance.name} {saga_id}", fragments.saga_detail(view))


def setup_dashboard_routes(app: web.Application) -> None:
    """Add the dashboard pages to the admin app."""
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/dashboard/sagas/{saga_id}", dashboard_saga)
