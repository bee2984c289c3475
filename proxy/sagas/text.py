"""Plain-text rendering of the saga views for ``saga-sidecar sagas`` (the readable default).

Input is the redacted JSON of ``saga_runner.views``; output is aligned columns for a list and, for
one saga, its stages (a parallel group's members side by side on one line), then an indented step
timeline (a TCC step with how its try, confirm and cancel went). Control characters in stored
values (which are user input) are shown escaped, so a saga cannot rewrite the operator's
terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

LIST_COLUMNS = (
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "status"),
    ("BUSINESS ID", "business_id"),
    ("CREATED", "created_at"),
    ("STEP", "current_step"),
    ("REASON", "failure_reason"),
)


def clean(value: object) -> str:
    """``value`` as one line of text, control characters escaped, ``-`` for nothing."""
    if value is None or value == "":
        return "-"
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Rows aligned under their headers, columns separated by two spaces."""
    lines = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def page_text(page: Mapping[str, Any]) -> str:
    """A page of ``views.page_view`` as a table, then the cursor of the next page."""
    items = page["items"]
    if not items:
        return "no sagas match"
    rows = [[clean(item[key]) for _, key in LIST_COLUMNS] for item in items]
    text = table([h for h, _ in LIST_COLUMNS], rows)
    if page["next_cursor"]:
        text += f"\nmore: --before {page['next_cursor']}"
    return text


def saga_line(saga: Mapping[str, Any]) -> str:
    """``<id> <name> <status>`` plus the failure reason, if any."""
    line = f"{saga['id']} {clean(saga['name'])} {saga['status']}"
    if saga.get("failure_reason"):
        line += f" ({clean(saga['failure_reason'])})"
    return line


def _attempt_line(attempt: Mapping[str, Any]) -> str:
    outcome = clean(attempt["status_code"] if attempt["status_code"] is not None else None)
    error = f"  {clean(attempt['error'])}" if attempt["error"] else ""
    return (
        f"      {attempt['kind']} #{attempt['attempt']}  {attempt['started_at']}  "
        f"{attempt['duration_ms']:.1f}ms  status {outcome}{error}"
    )


def _phase_text(name: str, call: Mapping[str, Any]) -> str:
    """``try: succeeded (1 call, last 201)``; ``confirm: -`` for a call never made."""
    if not call["calls"] and call["status"] is None:
        return f"{name}: -"
    last = call["last_status_code"] if call["last_status_code"] is not None else call["last_error"]
    calls = f"{call['calls']} call{'s' if call['calls'] != 1 else ''}, last {clean(last)}"
    return f"{name}: {call['status'] or 'ended'} ({calls})"


def _step_lines(step: Mapping[str, Any]) -> list[str]:
    forward = "try" if step["phases"] else "action"
    lines = [
        f"  #{step['order']} {clean(step['name'])}  {step['status']}  "
        f"({forward} attempts {step['retry_count']}/{step['max_retry_count']})  "
        f"stage {step['stage']}"
    ]
    if step["phases"]:
        lines.append("      " + "   ".join(_phase_text(n, c) for n, c in step["phases"].items()))
    if step["error"]:
        lines.append(f"      error: {clean(step['error'])}")
    awaited = step.get("await")
    if awaited:
        lines.append(_await_line(awaited, step["status"] == "waiting"))
    lines += [_attempt_line(a) for a in step["attempts"]]
    return lines


def stage_lines(saga: Mapping[str, Any]) -> list[str]:
    """One line per stage, a parallel group's members side by side: ``name status | ...``."""
    status = {step["name"]: step["status"] for step in saga["steps"]}
    lines = []
    for stage in saga["stages"]:
        members = " | ".join(f"{clean(n)} {status.get(n, '-')}" for n in stage["steps"])
        shape = "  (parallel)" if stage["parallel"] else ""
        lines.append(f"  {stage['stage']}  {members}{shape}")
    return lines


def _await_line(awaited: Mapping[str, Any], waiting: bool) -> str:
    """How the step waits (or what ended its wait): which await, since when, until when."""
    kind = clean(awaited["kind"])
    since, until = clean(awaited["waiting_since"]), clean(awaited["wait_until"])
    if waiting and not awaited["outcome"]:
        return f"      waiting for its {kind} since {since} until {until}"
    return f"      awaited its {kind} from {since}: {clean(awaited['outcome'])}"


def detail_text(saga: Mapping[str, Any]) -> str:
    """One saga of ``views.detail_view``: facts, stages, step timeline, events, input."""
    facts = [
        ("saga", saga["id"]),
        ("name", saga["name"]),
        ("status", saga["status"]),
        ("kind", saga["kind"]),
        *([("phase", saga["phase"])] if saga["phase"] else []),
        ("business id", saga["business_id"]),
        ("failure", saga["failure_reason"]),
        ("failed step", saga["failed_step"]),
        ("current step", saga["current_step"]),
        ("deadline", saga.get("deadline_at")),
        ("owner", saga["owner"]),
        ("created", saga["created_at"]),
        ("updated", saga["updated_at"]),
        ("completed", saga["completed_at"]),
        ("compensated", saga["compensated_at"]),
    ]
    lines = [f"{label + ':':<14}{clean(value)}" for label, value in facts]
    lines.append("stages:")
    lines += stage_lines(saga)
    lines.append("steps:")
    for step in saga["steps"]:
        lines += _step_lines(step)
    lines.append("events:")
    for event in saga["events"]:
        detail = json.dumps(event["detail"], ensure_ascii=True, sort_keys=True)
        lines.append(
            f"  {event['at']}  {clean(event['actor'])}  {clean(event['action'])}  {detail}"
        )
    lines.append(f"input: {json.dumps(saga['input'], ensure_ascii=True, sort_keys=True)}")
    return "\n".join(lines)
