"""Whole-document checks of a saga file that a per-field schema cannot make.

``find_problems`` walks the raw (parsed YAML) data of one saga file and returns every problem with
its key path: malformed templates or unknown template roots, unsafe call paths, CR/LF in header
values, template references to unknown steps, to steps that have not run yet or to a sibling in
the same parallel group, duplicate step names (groups included), an ``await`` that is not
exactly one supported kind (``callback``, or ``poll`` with a ``success``) with a timeout on a
plain step of an async saga (a poll's templates may use its own step, like a compensation),
steps whose calls do not fit the saga's ``kind`` (a saga step needs an ``action``; a TCC step
needs ``try``, ``confirm`` and ``cancel`` and has no ``action`` or ``compensation``), and calls
to services that are not configured. It is tolerant of a wrong shape (the schema reports those), so
a file's schema errors and its template errors are reported together.

Which steps a template may use ("earlier" means earlier items of ``steps``, never a member of
the same parallel group): an action or a try only earlier steps; a compensation or a cancel
earlier steps and its own step; a confirm every step (every try has succeeded when it runs);
``response`` every step; ``business_id`` no step and not ``saga.business_id`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeGuard

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

    siblings: frozenset[str] = frozenset()
    """The other members of its parallel group (for a clearer message)."""

    tcc: bool = False
    """Whether the saga is a TCC saga (for a clearer message)."""

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
            calls = "confirm and cancel" if self.tcc else "compensation"
            return f"refers to its own step; only the step's {calls} can use its result"
        if ref.step in self.siblings:
            return f"refers to step {ref.step!r} of its own parallel group, which runs alongside"
        return f"refers to step {ref.step!r}, which runs later"


def dotted(loc: Sequence[str | int]) -> str:
    """Render a key path the way error messages show it: ``steps[0].action.path``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass(frozen=True)
class _Placed:
    """One step of the file, wherever it is: a plain item or a member of a parallel group."""

    step: Mapping[str, Any]
    loc: Loc
    item: int
    name: str | None


_CALL_SCOPES: Final = {
    "action": "earlier",
    "try": "earlier",
    "compensation": "own",
    "cancel": "own",
    "confirm": "all",
}
"""Per call key: which steps its templates may use (see the module docstring)."""

_TCC_CALLS: Final = ("try", "confirm", "cancel")
_SAGA_CALLS: Final = ("action", "compensation")


def find_problems(
    data: Any, services: Collection[str] | None, brokers: Collection[str] | None = None
) -> list[Problem]:
    """Every whole-document problem of one saga file's data.

    Args:
        data: the parsed YAML document.
        services: configured service names; None skips the service check (pinned snapshots).
        brokers: configured broker names (``sagas.brokers``); None skips the broker check.
    """
    if not isinstance(data, Mapping):
        return []
    steps = data.get("steps")
    placed = _place(steps if isinstance(steps, list) else [])
    known = tuple(p.name for p in placed if p.name is not None)
    business_id = data.get("business_id")
    has_business_id = isinstance(business_id, str)
    problems = _duplicate_names(placed)
    if isinstance(business_id, str):
        scope = Scope(known, frozenset(), steps_allowed=False)
        problems += _check(("business_id",), scope, partial(parse_template, business_id))
    tcc = data.get("kind") == "tcc"
    for one in placed:
        problems += _shape_problems(one, tcc)
        problems += _await_problems(one, data, tcc)
        problems += _check_step(one, placed, has_business_id, Configured(services, brokers), tcc)
    response = data.get("response")
    if isinstance(response, Mapping):
        scope = Scope(known, frozenset(known), has_business_id=has_business_id)
        problems += _check_parts(response, ("response",), scope)
    return problems


def _place(items: Sequence[Any]) -> list[_Placed]:
    """Every step of ``items`` with where it is."""
    placed: list[_Placed] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            continue
        members = item.get("parallel")
        if "parallel" not in item:
            placed.append(_Placed(item, ("steps", index), index, _name_of(item)))
            continue
        for position, member in enumerate(members if isinstance(members, list) else []):
            # A group nested in a group is the schema's to report.
            if isinstance(member, Mapping) and "parallel" not in member:
                loc: Loc = ("steps", index, "parallel", position)
                placed.append(_Placed(member, loc, index, _name_of(member)))
    return placed


def _name_of(step: Mapping[str, Any]) -> str | None:
    name = step.get("name")
    return name if isinstance(name, str) else None


def _duplicate_names(placed: Sequence[_Placed]) -> list[Problem]:
    problems: list[Problem] = []
    first: dict[str, Loc] = {}
    for one in placed:
        if one.name is None:
            continue
        if one.name in first:
            where = dotted(first[one.name])
            problems.append(((*one.loc, "name"), f"duplicate step name {one.name!r} ({where})"))
        else:
            first[one.name] = one.loc
    return problems


def _shape_problems(one: _Placed, tcc: bool) -> list[Problem]:
    """The calls a step must have, and may not have, in a saga of its ``kind``."""
    needed, foreign = (_TCC_CALLS, _SAGA_CALLS) if tcc else (("action",), _TCC_CALLS)
    # A key given as null counts as absent (a snapshot lists a plain step's compensation so).
    problems: list[Problem] = [
        ((*one.loc, key), "required key is missing") for key in needed if one.step.get(key) is None
    ]
    for key in foreign:
        if one.step.get(key) is not None:
            message = (
                f"a TCC step has try, confirm and cancel, not {key}"
                if tcc
                else f"{key} belongs to a TCC step (kind: tcc at the saga's top level)"
            )
            problems.append(((*one.loc, key), message))
    return problems


def _await_problems(one: _Placed, data: Mapping[str, Any], tcc: bool) -> list[Problem]:
    """An ``await``: exactly one kind, with a timeout, on a plain step of an async saga (a poll
    of a step that publishes names its service)."""
    awaited = one.step.get("await")
    if not isinstance(awaited, Mapping):
        return []  # absent, or the schema's to report
    loc: Loc = (*one.loc, "await")
    kinds = [kind for kind in ("callback", "poll", "message") if awaited.get(kind) is not None]
    problems: list[Problem] = []
    if len(kinds) != 1:
        problems.append((loc, "needs exactly one of callback, poll or message"))
    for kind in ("callback", "poll", "message"):
        declared = awaited.get(kind)
        if isinstance(declared, Mapping) and declared.get("timeout") is None:
            problems.append(((*loc, kind, "timeout"), "required: how long to wait for the outcome"))
    poll = awaited.get("poll")
    if isinstance(poll, Mapping) and poll.get("success") is None:
        problems.append(((*loc, "poll", "success"), "required: the answer that means success"))
    action = one.step.get("action")
    if isinstance(poll, Mapping) and poll.get("service") is None and _publishes(action):
        message = "required: the action publishes, so the poll names the service it asks"
        problems.append(((*loc, "poll", "service"), message))
    if data.get("mode", "sync") != "async":
        problems.append((loc, "a step that awaits its outcome needs the saga's mode: async"))
    if tcc:
        problems.append((loc, "a TCC step cannot await its outcome"))
    if len(one.loc) > 2:
        problems.append((loc, "a member of a parallel group cannot await its outcome"))
    return problems


@dataclass(frozen=True)
class Configured:
    """The names the config gives a saga file to refer to (None: not checked)."""

    services: Collection[str] | None
    brokers: Collection[str] | None


def _publishes(call: Any) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(call, Mapping) and "publish" in call


def _check_step(
    one: _Placed,
    placed: Sequence[_Placed],
    has_business_id: bool,
    configured: Configured,
    tcc: bool,
) -> list[Problem]:
    known = tuple(p.name for p in placed if p.name is not None)
    earlier = frozenset(p.name for p in placed if p.item < one.item and p.name is not None)
    siblings = frozenset(
        p.name for p in placed if p.item == one.item and p.name not in (None, one.name)
    )
    visible = {
        "earlier": earlier,
        "own": earlier | {one.name} if one.name is not None else earlier,
        "all": frozenset(known),
    }
    problems: list[Problem] = []
    for key, reach in _CALL_SCOPES.items():
        scope = Scope(
            known,
            visible[reach],
            one.name,
            siblings=siblings,
            tcc=tcc,
            has_business_id=has_business_id,
        )
        call = one.step.get(key)
        if _publishes(call):
            loc = (*one.loc, key)
            if key in _TCC_CALLS:
                message = "a TCC call is an HTTP call (only action and compensation may publish)"
                problems.append((loc, message))
            else:
                problems += _check_publish(
                    call["publish"], (*loc, "publish"), scope, configured.brokers
                )
        else:
            problems += _check_call(call, (*one.loc, key), scope, configured.services)
    awaited = one.step.get("await")
    poll = awaited.get("poll") if isinstance(awaited, Mapping) else None
    if isinstance(poll, Mapping):
        # Polled after the action was accepted: like a compensation, it may use its own step.
        scope = Scope(known, visible["own"], one.name, has_business_id=has_business_id)
        problems += _check_call(poll, (*one.loc, "await", "poll"), scope, configured.services)
    return problems


def _check_publish(
    target: Any, loc: Loc, scope: Scope, brokers: Collection[str] | None
) -> list[Problem]:
    if not isinstance(target, Mapping):
        return []  # the schema's to report
    problems: list[Problem] = []
    broker = target.get("broker")
    if brokers is not None and isinstance(broker, str) and broker not in brokers:
        known = ", ".join(sorted(brokers)) or "none are configured in sagas.brokers"
        problems.append(((*loc, "broker"), f"unknown broker {broker!r} (brokers: {known})"))
    to = target.get("to")
    if isinstance(to, str):
        problems += _check((*loc, "to"), scope, partial(compile_header, to))
    return problems + _check_parts(target, loc, scope)


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
