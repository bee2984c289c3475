"""Whole-document checks of a saga file that a per-field schema cannot make.

``find_problems`` walks the raw (parsed YAML) data of one saga file and returns every problem with
its key path: malformed templates or unknown template roots, unsafe call paths, CR/LF in header
values, template references to unknown steps or to steps that have not run yet, duplicate step
names, and calls to services that are not configured. It is tolerant of a wrong shape (the schema
reports those), so a file's schema errors and its template errors are reported together.

Which steps a template may use: an action only earlier steps; a compensation earlier steps and its
own step; ``response`` every step; ``business_id`` no step and not ``saga.business_id`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from saga_runner.template import (
    CompiledValue,
    Loc,
    Reference,
    compile_header,
    compile_json,
    compile_path,
    parse_template,
)

Problem = tuple[Loc, str]


@dataclass(frozen=True)
class Scope:
    """What the templates at one place of a saga file may look up."""

    steps: tuple[str, ...]
    """Every step name of the saga, in order."""

    visible: frozenset[str]
    """Step names whose results exist when these templates are rendered."""

    own_step: str | None = None
    """The step the templates belong to (for a clearer message)."""

    steps_allowed: bool = True
    """False for ``business_id``, which is rendered before any step runs."""

    has_business_id: bool = False
    """Whether ``saga.business_id`` has a value (the saga declares ``business_id``)."""

    def problem(self, ref: Reference) -> str | None:
        """Why ``ref`` may not be used here, or None."""
        if ref.root == "saga" and ref.segments[1] == "business_id":
            if not self.steps_allowed:
                return "refers to business_id itself"
            if not self.has_business_id:
                return "refers to saga.business_id but the saga declares no business_id"
        if ref.step is None:
            return None
        if not self.steps_allowed:
            return "refers to a step; business_id can use only input, headers and saga.id"
        if ref.step not in self.steps:
            return f"refers to unknown step {ref.step!r}"
        if ref.step in self.visible:
            return None
        if ref.step == self.own_step:
            return "refers to its own step; only the step's compensation can use its result"
        return f"refers to step {ref.step!r}, which runs later"


def dotted(loc: Sequence[str | int]) -> str:
    """Render a key path the way error messages show it: ``steps[0].action.path``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def find_problems(data: Any, services: Collection[str] | None) -> list[Problem]:
    """Every whole-document problem of one saga file's data.

    Args:
        data: the parsed YAML document.
        services: configured service names; None skips the service check (pinned snapshots).
    """
    if not isinstance(data, Mapping):
        return []
    steps = data.get("steps")
    steps = steps if isinstance(steps, list) else []
    names = [
        s.get("name") if isinstance(s, Mapping) and isinstance(s.get("name"), str) else None
        for s in steps
    ]
    known = tuple(n for n in names if n is not None)
    business_id = data.get("business_id")
    has_business_id = isinstance(business_id, str)
    problems = _duplicate_names(names)
    if isinstance(business_id, str):
        scope = Scope(known, frozenset(), steps_allowed=False)
        problems += _check(("business_id",), scope, partial(parse_template, business_id))
    for index, step in enumerate(steps):
        if isinstance(step, Mapping):
            problems += _check_step(step, index, names, has_business_id, services)
    response = data.get("response")
    if isinstance(response, Mapping):
        scope = Scope(known, frozenset(known), has_business_id=has_business_id)
        problems += _check_parts(response, ("response",), scope)
    return problems


def _duplicate_names(names: Sequence[str | None]) -> list[Problem]:
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name is None:
            continue
        if name in first:
            where = f"steps[{first[name]}]"
            problems.append((("steps", index, "name"), f"duplicate step name {name!r} ({where})"))
        else:
            first[name] = index
    return problems


def _check_step(
    step: Mapping[str, Any],
    index: int,
    names: Sequence[str | None],
    has_business_id: bool,
    services: Collection[str] | None,
) -> list[Problem]:
    known = tuple(n for n in names if n is not None)
    own = names[index]
    earlier = frozenset(n for n in names[:index] if n is not None)
    own_and_earlier = earlier | {own} if own is not None else earlier
    loc: Loc = ("steps", index)
    action = Scope(known, earlier, own, has_business_id=has_business_id)
    compensation = Scope(known, own_and_earlier, own, has_business_id=has_business_id)
    return _check_call(step.get("action"), (*loc, "action"), action, services) + _check_call(
        step.get("compensation"), (*loc, "compensation"), compensation, services
    )


def _check_call(
    call: Any, loc: Loc, scope: Scope, services: Collection[str] | None
) -> list[Problem]:
    if not isinstance(call, Mapping):
        return []
    problems: list[Problem] = []
    service = call.get("service")
    if services is not None and isinstance(service, str) and service not in services:
        known = ", ".join(sorted(services)) or "none are configured"
        problems.append(((*loc, "service"), f"unknown service {service!r} (services: {known})"))
    path = call.get("path")
    if isinstance(path, str):
        problems += _check((*loc, "path"), scope, partial(compile_path, path))
    return problems + _check_parts(call, loc, scope)


def _check_parts(section: Mapping[str, Any], loc: Loc, scope: Scope) -> list[Problem]:
    """Check the ``headers`` and ``body`` of a call or of the response."""
    problems: list[Problem] = []
    headers = section.get("headers")
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            if isinstance(value, str):
                problems += _check((*loc, "headers", name), scope, partial(compile_header, value))
    if "body" in section:
        compiled, found = compile_json(section["body"], (*loc, "body"))
        problems += found + list(_reference_problems(compiled, (*loc, "body"), scope))
    return problems


def _check(loc: Loc, scope: Scope, compile_one: Callable[[], CompiledValue]) -> list[Problem]:
    try:
        compiled = compile_one()
    except ValueError as exc:
        return [(loc, str(exc))]
    return list(_reference_problems(compiled, loc, scope))


def _reference_problems(compiled: CompiledValue, loc: Loc, scope: Scope) -> Iterator[Problem]:
    for sub, template in compiled.templates():
        for ref in template.references:
            problem = scope.problem(ref)
            if problem:
                yield (*loc, *sub), f"template '{{{{ {ref} }}}}' {problem}"
