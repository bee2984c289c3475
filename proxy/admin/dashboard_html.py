"""HTML fragments of the saga dashboard, every dynamic value escaped.

Saga data is user input (business ids, request bodies, upstream error texts), so each value goes
through ``esc`` (``html.escape`` with quotes) on its way into markup, and every URL is built with
``urlencode`` and then escaped. Fragments are rendered from the redacted JSON views of
``saga_runner.views``, so the dashboard never sees more than the admin API shows. A JSON value
is shown up to ``MAX_SHOWN`` characters, and is encoded only that far: a trigger body of several
MiB costs the page no more than a small one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from saga_runner.operations import ListQuery
from saga_runner.states import SagaStatus

DASHBOARD_PATH = "/dashboard"
MAX_SHOWN = 64 * 1024
CUT_MARKER = "\n… [cut: longer than 64 KiB; GET /sagas/{id} on the admin API has it whole]"


def esc(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return escape("" if value is None else str(value), quote=True)


def when(iso: str | None, *, millis: bool = True) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS[.mmm]`` (UTC), escaped; ``-`` when absent."""
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    return esc(f"{text}.{moment.microsecond // 1000:03d}" if millis else text)


def badge(status: str) -> str:
    """A coloured status label."""
    return f'<span class="badge status-{esc(status)}">{esc(status)}</span>'


def list_url(query: ListQuery, **changes: str | None) -> str:
    """The dashboard list URL for ``query`` with ``changes`` applied (escaped for an href)."""
    params: dict[str, str | None] = {
        "status": query.status.value if query.status else None,
        "name": query.name,
        "business_id": query.business_id,
        "limit": str(query.limit) if query.limit != ListQuery().limit else None,
    }
    params.update(changes)
    kept = {k: v for k, v in params.items() if v}
    return esc(f"{DASHBOARD_PATH}?{urlencode(kept)}" if kept else DASHBOARD_PATH)


def saga_url(saga_id: str) -> str:
    """The dashboard page of one saga (escaped for an href)."""
    return esc(f"{DASHBOARD_PATH}/sagas/{quote(saga_id, safe='')}")


def json_block(value: Any) -> str:
    """A JSON value pretty-printed in a ``<pre>``, cut after ``MAX_SHOWN`` characters."""
    encoder = json.JSONEncoder(indent=2, sort_keys=True, ensure_ascii=False, default=str)
    parts: list[str] = []
    shown = 0
    for chunk in encoder.iterencode(value):  # indented: a lazy generator, stopped early
        parts.append(chunk)
        shown += len(chunk)
        if shown > MAX_SHOWN:
            text = "".join(parts)[:MAX_SHOWN] + CUT_MARKER
            break
    else:
        text = "".join(parts)
    return f"<pre>{esc(text)}</pre>"


def counts_bar(counts: Mapping[SagaStatus, int], query: ListQuery) -> str:
    """One card per status with its count, each linking to the list filtered on it."""
    total = sum(counts.values())
    every = " active" if query.status is None else ""
    cards = [
        f'<a class="count{every}" href="{list_url(query, status=None, before=None)}">'
        f'<span class="n">{total}</span><span class="label">all</span></a>'
    ]
    for status in SagaStatus:
        active = " active" if query.status is status else ""
        href = list_url(query, status=status.value, before=None)
        cards.append(
            f'<a class="count status-{esc(status)}{active}" href="{href}">'
            f'<span class="n">{counts.get(status, 0)}</span>'
            f'<span class="label">{esc(status)}</span></a>'
        )
    return f'<nav class="counts" aria-label="sagas by status">{"".join(cards)}</nav>'


def filter_form(query: ListQuery, names: Iterable[str]) -> str:
    """The GET form filtering the list by status, saga name and business id."""
    options = ['<option value="">any</option>']
    for status in SagaStatus:
        selected = " selected" if query.status is status else ""
        options.append(f'<option value="{esc(status)}"{selected}>{esc(status)}</option>')
    known = "".join(f'<option value="{esc(n)}"></option>' for n in sorted(set(names)))
    return (
        f'<form class="filters" method="get" action="{DASHBOARD_PATH}">'
        f'<label>status<select name="status">{"".join(options)}</select></label>'
        f'<label>saga name<input name="name" list="saga-names" value="{esc(query.name)}">'
        f'</label><datalist id="saga-names">{known}</datalist>'
        f'<label>business id<input name="business_id" value="{esc(query.business_id)}"></label>'
        '<button type="submit">Filter</button>'
        f'<a href="{DASHBOARD_PATH}">clear</a></form>'
    )


def saga_rows(items: Iterable[Mapping[str, Any]], step_names: Mapping[str, str]) -> str:
    """The list table (rows from ``views.saga_summary``); ``step_names``: saga id -> step."""
    rows = []
    for saga in items:
        rows.append(
            "<tr>"
            f'<td class="id"><a href="{saga_url(saga["id"])}">{esc(saga["id"])}</a></td>'
            f"<td>{esc(saga['name'])}</td>"
            f'<td class="mono">{esc(saga["business_id"] or "-")}</td>'
            f"<td>{badge(saga['status'])}</td>"
            f'<td class="nowrap">{esc(step_names.get(saga["id"], "-"))}</td>'
            f'<td class="reason">{esc(saga["failure_reason"] or "")}</td>'
            f'<td class="nowrap">{when(saga["created_at"], millis=False)}</td>'
            f'<td class="nowrap">{when(saga["updated_at"], millis=False)}</td>'
            "</tr>"
        )
    if not rows:
        return '<p class="empty sagas">No sagas match these filters.</p>'
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "saga id",
            "name",
            "business id",
            "status",
            "step",
            "reason",
            "created",
            "updated",
        )
    )
    return (
        f'<table class="sagas"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def pager(query: ListQuery, next_cursor: str | None) -> str:
    """Links to the newest page and to the next (older) page when there is one."""
    links = []
    if query.before is not None:
        links.append(f'<a href="{list_url(query, before=None)}">&larr; newest</a>')
    if next_cursor is not None:
        links.append(f'<a rel="next" href="{list_url(query, before=next_cursor)}">older &rarr;</a>')
    return f'<nav class="pager">{"".join(links)}</nav>' if links else ""


FACTS = (
    ("saga id", "id"),
    ("name", "name"),
    ("kind", "kind"),
    ("business id", "business_id"),
    ("mode", "mode"),
    ("failure reason", "failure_reason"),
    ("failed step", "failed_step"),
    ("replica (lease owner)", "owner"),
    ("definition", "definition_hash"),
)
TIMES = (
    ("created", "created_at"),
    ("updated", "updated_at"),
    ("completed", "completed_at"),
    ("compensated", "compensated_at"),
    ("lease expires", "lease_expires_at"),
    ("next run", "next_run_at"),
    ("deadline", "deadline_at"),
)


def saga_facts(saga: Mapping[str, Any]) -> str:
    """The instance's fields as a definition list."""
    items = [f"<dt>status</dt><dd>{badge(saga['status'])}</dd>"]
    if saga["phase"]:
        items.append(
            f'<dt>TCC phase</dt><dd><span class="saga-phase">{esc(saga["phase"])}</span></dd>'
        )
    items += [f"<dt>{label}</dt><dd>{esc(saga[key] or '-')}</dd>" for label, key in FACTS]
    items += [f"<dt>{label}</dt><dd>{when(saga[key])}</dd>" for label, key in TIMES if saga[key]]
    return f'<dl class="facts">{"".join(items)}</dl>'


def attempts_table(attempts: Iterable[Mapping[str, Any]]) -> str:
    """Every HTTP call of a step: kind, number, start, duration, status code, error."""
    rows = [
        f'<tr class="kind-{esc(a["kind"])}"><td>{esc(a["kind"])}</td><td>{esc(a["attempt"])}</td>'
        f"<td>{when(a['started_at'])}</td><td>{esc(a['duration_ms'])} ms</td>"
        f'<td class="mono">{esc(a["status_code"] if a["status_code"] is not None else "-")}</td>'
        f"<td>{esc(a['error'] or '')}</td></tr>"
        for a in attempts
    ]
    if not rows:
        return '<p class="tries">no calls made</p>'
    head = (
        "<tr><th>call</th><th>#</th><th>started</th><th>took</th><th>status</th><th>error</th></tr>"
    )
    return f'<table class="attempts"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def phases_strip(step: Mapping[str, Any]) -> str:
    """A TCC step's try, confirm and cancel side by side: status, calls, last answer."""
    if not step["phases"]:
        return ""
    cells = []
    for name, call in step["phases"].items():
        current = " current" if name == step["phase"] else ""
        state = call["status"] or ("-" if not call["calls"] else "ended")
        last = call["last_status_code"] if call["last_status_code"] is not None else "-"
        calls = f"{call['calls']} call{'' if call['calls'] == 1 else 's'}"
        cells.append(
            f'<span class="phase phase-{esc(name)} status-{esc(state)}{current}">'
            f'<span class="phase-name">{esc(name)}</span> <b>{esc(state)}</b>'
            f'<span class="phase-calls">{esc(calls)} · last {esc(last)}</span></span>'
        )
    return f'<div class="phases">{"".join(cells)}</div>'


def step_item(step: Mapping[str, Any]) -> str:
    """One step of the timeline, with its attempts and (folded) request and answers."""
    data = {k: step[k] for k in ("execute_data", "result", "compensate_data") if step[k]}
    error = f'<p class="error">{esc(step["error"])}</p>' if step["error"] else ""
    payload = f"<details><summary>request and answer</summary>{json_block(data)}</details>"
    forward = "try" if step["phases"] else "action"
    return (
        f'<li class="step status-{esc(step["status"])}" id="step-{esc(step["order"])}">'
        f'<div class="step-head"><span class="order">#{esc(step["order"])}</span>'
        f"<strong>{esc(step['name'])}</strong>{badge(step['status'])}"
        f'<span class="tries">{forward} attempts {esc(step["retry_count"])}/'
        f"{esc(step['max_retry_count'])}</span></div>{phases_strip(step)}{error}{await_note(step)}"
        f"{attempts_table(step['attempts'])}{payload if data else ''}</li>"
    )


def stage_item(stage: Mapping[str, Any], steps: Mapping[str, Mapping[str, Any]]) -> str:
    """One item of the timeline: a step, or a parallel group's members side by side."""
    members = "".join(step_item(steps[name]) for name in stage["steps"] if name in steps)
    if not stage["parallel"]:
        return members
    return (
        f'<li class="stage parallel" id="stage-{esc(stage["stage"])}">'
        f'<div class="stage-head">stage {esc(stage["stage"])} · parallel · '
        f"{len(stage['steps'])} steps</div>"
        f'<ol class="members">{members}</ol></li>'
    )


def await_note(step: Mapping[str, Any]) -> str:
    """How a step that awaits its outcome waits: which await, since when, until when (or what
    ended its wait); empty for any other step."""
    awaited = step.get("await")
    if not awaited:
        return ""
    kind = esc(awaited["kind"])
    since = when(awaited["waiting_since"])
    if step["status"] == "waiting" and not awaited["outcome"]:
        until = when(awaited["wait_until"])
        return f'<p class="await">waiting for its {kind} since {since} until {until}</p>'
    return f'<p class="await">awaited its {kind} from {since}: {esc(awaited["outcome"])}</p>'


def events_table(events: Iterable[Mapping[str, Any]]) -> str:
    """Who did what to the saga, and when (oldest first)."""
    rows = [
        f'<tr><td>{when(e["at"])}</td><td class="mono">{esc(e["actor"])}</td>'
        f"<td>{esc(e['action'])}</td><td>{json_block(e['detail']) if e['detail'] else ''}</td></tr>"
        for e in events
    ]
    if not rows:
        return '<p class="empty">No events.</p>'
    head = "<tr><th>at</th><th>actor</th><th>action</th><th>detail</th></tr>"
    return f'<table class="events"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


RETRYABLE = frozenset({"failed", "running", "compensating"})
ABORTABLE = frozenset({"running"})


def action_buttons(saga: Mapping[str, Any]) -> str:
    """Retry (a failed or stuck saga) and Abort (a running one), run by the page's script."""
    status = saga["status"]
    wanted = [("retry", "Retry")] if status in RETRYABLE else []
    wanted += [("abort", "Abort")] if status in ABORTABLE else []
    if not wanted:
        return ""
    buttons = "".join(
        f'<button type="button" class="{action}" data-action="{action}" '
        f'data-saga="{esc(saga["id"])}">{label}</button>'
        for action, label in wanted
    )
    return f'<div class="actions needs-script">{buttons}</div>'


def saga_detail(saga: Mapping[str, Any]) -> str:
    """A whole saga page body from ``views.detail_view``."""
    by_name = {step["name"]: step for step in saga["steps"]}
    steps = "".join(stage_item(stage, by_name) for stage in saga["stages"])
    phase = f' <span class="saga-phase">{esc(saga["phase"])}</span>' if saga["phase"] else ""
    return (
        f'<nav class="crumbs"><a href="{DASHBOARD_PATH}">&larr; all sagas</a></nav>'
        f"<h1>{esc(saga['name'])} {badge(saga['status'])}{phase}</h1>"
        f"{action_buttons(saga)}{saga_facts(saga)}"
        f'<h2>Step timeline</h2><ol class="timeline">{steps}</ol>'
        f"<h2>Events</h2>{events_table(saga['events'])}"
        f"<h2>Input</h2>{json_block(saga['input'])}"
        f"<h2>Stored response</h2>{json_block(saga['response'])}"
    )
