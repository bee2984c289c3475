"""``{{ path }}`` templates in saga files: parsed once at load time, rendered per call.

A template is plain text with ``{{ dotted.path }}`` lookups, never code. Roots:
``input`` (the trigger's JSON body), ``headers`` (trigger request headers, lower-case names),
``saga.id``, ``saga.business_id``, and ``steps.NAME.status`` / ``.body`` / ``.headers``. Deeper
segments index into objects by key and into lists by integer index (``input.items.0.sku``); header
names are matched case-insensitively (the segment is lower-cased at parse time).

Rendering rules:

- A string that is exactly one ``{{ … }}`` (nothing around it, not even spaces; spaces inside the
  braces are fine) keeps the value's JSON type in a body (``"{{ input.amount }}"`` renders the
  number ``12.5``, an object stays an object).
- Anywhere else a value is interpolated as text: a string as itself, every other value as its
  compact JSON text (``12.5``, ``true``, ``false``, ``null``, ``{"a":1}``).
- In a call ``path`` every substituted value is percent-encoded as ONE path segment (``/``, ``\\``,
  ``?``, ``#``, ``%``, spaces and control characters all encoded), so no value can change the
  scheme, host or path structure; ``null``, objects, lists and empty strings are refused there.
- A path segment holding a substituted value must not be a dot segment: ``.`` or ``..`` with any
  dot written as ``.``, ``%2e`` or ``%2E`` (RFC 3986 and WHATWG URL parsers decode those before
  removing dot segments, so ``/svc/%2E%2E/orders`` reaches ``/orders``). That is a failed render
  blamed on the segment's first lookup. A value is encoded once, so ``%2E%2E`` in a value is sent
  as ``%252E%252E``, which a server decoding once sees as the literal text ``%2E%2E``; a server
  that decodes twice is not protected against. Dots in a literal query are not segments.
- ``build_url`` joins a service URL with a rendered path and checks the result is still on that
  service (no dot segment in any of those spellings either, so none in the literal text).
- Header values are text; a looked-up value containing CR, LF or NUL is refused.
- A lookup that cannot be resolved at run time, or whose value cannot go where it is used, raises
  ``TemplateError`` naming the path, with ``root`` set to the lookup's root: the engine answers a
  trigger 422 when that is ``input`` or ``headers`` (the client's fault), 502 otherwise.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit

from yarl import URL

from saga_runner.errors import TemplateError, TemplateRoot
from saga_runner.redact import REDACTED

Loc = tuple[str | int, ...]

_TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")
_STEP_FIELDS = ("status", "body", "headers")
_FORBIDDEN_IN_HEADER = ("\r", "\n", "\0")
_PATH_UNSAFE_RE = re.compile(r"[^\x21-\x7e]|[\\#]")
# ``.`` or ``..``, each dot literal or percent-encoded: what URL parsers resolve as a step.
_DOT_SEGMENT_RE = re.compile(r"(?:\.|%2[eE]){1,2}")


@dataclass(frozen=True)
class Reference:
    """One ``{{ dotted.path }}`` lookup, split into segments."""

    segments: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.segments)

    @cached_property
    def root(self) -> TemplateRoot:
        """The first segment: ``input``, ``headers``, ``saga`` or ``steps``."""
        return TemplateRoot(self.segments[0])

    def error(self, problem: str) -> TemplateError:
        """A ``TemplateError`` naming this lookup, its value at fault."""
        return TemplateError(f"{{{{ {self} }}}}: {problem}", root=self.root)

    @property
    def step(self) -> str | None:
        """The step name for a ``steps.NAME…`` lookup, else None."""
        return self.segments[1] if self.root == "steps" else None


def parse_reference(text: str) -> Reference:
    """Parse the inside of ``{{ … }}``; raise ValueError if it is not a known lookup."""
    path = text.strip()
    if not _PATH_RE.match(path):
        raise ValueError(
            f"malformed template '{{{{{text}}}}}': expected a dotted path like input.order_no"
        )
    segments = path.split(".")
    problem = _shape_problem(segments)
    if problem:
        raise ValueError(f"template '{{{{ {path} }}}}': {problem}")
    if segments[0] == "headers" and len(segments) == 2:
        segments[1] = segments[1].lower()
    elif segments[0] == "steps" and len(segments) == 4 and segments[2] == "headers":
        segments[3] = segments[3].lower()
    return Reference(tuple(segments))


def _shape_problem(segments: Sequence[str]) -> str | None:
    root, depth = segments[0], len(segments)
    if root == "input":
        return None
    if root == "headers":
        return None if depth <= 2 else "a header value has no fields (use headers.NAME)"
    if root == "saga":
        if depth == 2 and segments[1] in ("id", "business_id"):
            return None
        return "the saga root has only saga.id and saga.business_id"
    if root == "steps":
        return _step_shape_problem(segments)
    return f"unknown root {root!r} (use input, headers, saga or steps)"


def _step_shape_problem(segments: Sequence[str]) -> str | None:
    if len(segments) < 3 or segments[2] not in _STEP_FIELDS:
        return "a step lookup is steps.NAME.status, steps.NAME.body or steps.NAME.headers"
    if segments[2] == "status" and len(segments) > 3:
        return "steps.NAME.status is a number and has no fields"
    if segments[2] == "headers" and len(segments) > 4:
        return "a header value has no fields (use steps.NAME.headers.HEADER)"
    return None


@dataclass(frozen=True)
class StepResult:
    """What a finished step call answered: its status, parsed body and headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderContext:
    """Everything a template may look up while a saga runs.

    Args:
        input: the trigger's parsed JSON body (None when it had none).
        headers: the trigger's request headers (any case; matched lower-case).
        saga_id: the saga instance id.
        business_id: the rendered ``business_id`` (None when the saga has none).
        steps: results of the steps that answered so far, by step name.
        withheld: set when ``input`` and ``headers`` are the stored redacted copy whose
            redacted values could not be recovered: why. A lookup reaching a redaction
            placeholder then fails with it rather than render the placeholder.
    """

    input: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    saga_id: str = ""
    business_id: str | None = None
    steps: Mapping[str, StepResult] = field(default_factory=dict)
    withheld: str | None = None

    @cached_property
    def _roots(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "saga": {"id": self.saga_id, "business_id": self.business_id},
        }

    def lookup(self, ref: Reference) -> Any:
        """Resolve ``ref``; raise TemplateError naming the path when it cannot be."""
        if ref.root == "steps":
            result = self.steps.get(ref.segments[1])
            if result is None:
                raise ref.error(f"step {ref.segments[1]!r} has no result")
            value: Any = {
                "status": result.status,
                "body": result.body,
                "headers": {k.lower(): v for k, v in result.headers.items()},
            }[ref.segments[2]]
            return _walk(value, ref, 3)
        found = _walk(self._roots[ref.root], ref, 1)
        if self.withheld is not None and _holds_placeholder(found):
            raise TemplateError(
                f"{ref} was redacted when stored and {self.withheld}", root=ref.root
            )
        return found


def _holds_placeholder(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_holds_placeholder(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_placeholder(v) for v in value)
    return bool(value == REDACTED)


def _walk(value: Any, ref: Reference, start: int) -> Any:
    for index in range(start, len(ref.segments)):
        segment = ref.segments[index]
        where = ".".join(ref.segments[:index])
        if isinstance(value, Mapping):
            if segment not in value:
                raise ref.error(f"{where} has no key {segment!r}")
            value = value[segment]
        elif isinstance(value, list | tuple):
            if not (segment.isascii() and segment.isdigit()):
                raise ref.error(f"{where} is a list, {segment!r} no index")
            if int(segment) >= len(value):
                raise ref.error(f"{where} has {len(value)} items, no index {segment}")
            value = value[int(segment)]
        else:
            kind = "null" if value is None else type(value).__name__
            raise ref.error(f"{where} is {kind}, it has no {segment!r}")
    return value


def as_text(value: Any) -> str:
    """Text form of a looked-up value: strings as-is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def encode_segment(value: Any, ref: Reference) -> str:
    """Percent-encode ``value`` as exactly one URL path segment (see the module docstring)."""
    if value is None or isinstance(value, Mapping | list | tuple):
        kind = "null" if value is None else "an object or list"
        raise ref.error(f"is {kind}, cannot be used in a path")
    text = as_text(value)
    if not text:
        raise ref.error("is empty, cannot be used as a path segment")
    try:
        return quote(text, safe="")
    except UnicodeEncodeError:  # an unpaired surrogate: not text any URL can carry
        raise ref.error("is not valid Unicode, cannot be used in a path") from None


def _path_segments(
    pieces: Sequence[tuple[str, Reference | None]],
) -> Iterator[tuple[str, list[Reference]]]:
    """The rendered path's segments up to a literal ``?``, each with the lookups inside it.

    A literal piece may hold ``/`` and ``?``; an encoded value never does.
    """
    text, refs = "", []
    for piece, ref in pieces:
        if ref is not None:
            text += piece
            refs.append(ref)
            continue
        path, query, _ = piece.partition("?")
        first, *rest = path.split("/")
        text += first
        for segment in rest:
            yield text, refs
            text, refs = segment, []
        if query:
            break
    yield text, refs


def header_text(value: Any, ref: Reference) -> str:
    """Text form of ``value`` for a header value; raise TemplateError if it cannot be one."""
    text = as_text(value)
    if any(c in text for c in _FORBIDDEN_IN_HEADER):
        raise ref.error("rendered header value contains CR, LF or NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate: the HTTP client could not send it
        raise ref.error("rendered header value is not valid Unicode") from None
    return text


class CompiledValue(ABC):
    """A parsed JSON value (body) or string whose templates can be rendered."""

    @abstractmethod
    def render(self, ctx: RenderContext) -> Any:
        """Render with ``ctx``; raise TemplateError on a failed lookup."""

    @abstractmethod
    def templates(self, loc: Loc = ()) -> Iterator[tuple[Loc, Template]]:
        """Every template inside, with its location relative to this value."""


def steps_referenced(values: Iterable[CompiledValue]) -> frozenset[str]:
    """Names of the steps whose answers the templates inside ``values`` look up."""
    return frozenset(
        ref.step
        for value in values
        for _loc, template in value.templates()
        for ref in template.references
        if ref.step is not None
    )


@dataclass(frozen=True)
class Template(CompiledValue):
    """A parsed string: literal text and references, in order."""

    source: str
    parts: tuple[str | Reference, ...]

    @property
    def references(self) -> tuple[Reference, ...]:
        """The lookups this template makes."""
        return tuple(p for p in self.parts if isinstance(p, Reference))

    @property
    def literal_text(self) -> str:
        """The text with every lookup replaced by ``x`` (used to check path structure)."""
        return "".join(p if isinstance(p, str) else "x" for p in self.parts)

    def render(self, ctx: RenderContext) -> Any:
        """Exactly one lookup: the value, JSON type kept. Otherwise: text (see ``render_text``)."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Reference):
            return ctx.lookup(self.parts[0])
        return self.render_text(ctx)

    def render_text(self, ctx: RenderContext) -> str:
        """Interpolate every lookup as text."""
        return "".join(p if isinstance(p, str) else as_text(ctx.lookup(p)) for p in self.parts)

    def render_path(self, ctx: RenderContext) -> str:
        """Interpolate every lookup as one percent-encoded path segment.

        Raises:
            TemplateError: a lookup fails, a value cannot be a segment, or a segment holding a
                value is a dot segment (blamed on the segment's first lookup).
        """
        pieces = [
            (p, None) if isinstance(p, str) else (encode_segment(ctx.lookup(p), p), p)
            for p in self.parts
        ]
        for segment, refs in _path_segments(pieces):
            if refs and _DOT_SEGMENT_RE.fullmatch(segment):
                raise refs[0].error(
                    f"makes the path segment {segment!r}, a dot segment: a server would "
                    "resolve it as a step up the path"
                )
        return "".join(text for text, _ in pieces)

    def render_header(self, ctx: RenderContext) -> str:
        """Interpolate as text; raise TemplateError if a value holds CR, LF, NUL or a surrogate.

        The literal text was checked by ``compile_header``, so only looked-up values are.
        """
        return "".join(
            p if isinstance(p, str) else header_text(ctx.lookup(p), p) for p in self.parts
        )

    def templates(self, loc: Loc = ()) -> Iterator[tuple[Loc, Template]]:
        """This template, at ``loc``."""
        yield loc, self


@dataclass(frozen=True)
class Constant(CompiledValue):
    """A JSON number, boolean or null: rendered as itself."""

    value: Any

    def render(self, ctx: RenderContext) -> Any:
        """The constant."""
        return self.value

    def templates(self, loc: Loc = ()) -> Iterator[tuple[Loc, Template]]:
        """None."""
        return iter(())


@dataclass(frozen=True)
class ListTemplate(CompiledValue):
    """A JSON array whose items may hold templates."""

    items: tuple[CompiledValue, ...]

    def render(self, ctx: RenderContext) -> list[Any]:
        """A new list of rendered items."""
        return [item.render(ctx) for item in self.items]

    def templates(self, loc: Loc = ()) -> Iterator[tuple[Loc, Template]]:
        """The templates of every item."""
        for index, item in enumerate(self.items):
            yield from item.templates((*loc, index))


@dataclass(frozen=True)
class ObjectTemplate(CompiledValue):
    """A JSON object whose values may hold templates (keys are literal)."""

    items: tuple[tuple[str, CompiledValue], ...]

    def render(self, ctx: RenderContext) -> dict[str, Any]:
        """A new dict of rendered values."""
        return {key: value.render(ctx) for key, value in self.items}

    def templates(self, loc: Loc = ()) -> Iterator[tuple[Loc, Template]]:
        """The templates of every value."""
        for key, value in self.items:
            yield from value.templates((*loc, key))


def parse_template(text: str) -> Template:
    """Parse a string with ``{{ … }}`` lookups; raise ValueError on malformed ones."""
    parts: list[str | Reference] = []
    position = 0
    for match in _TEMPLATE_RE.finditer(text):
        _add_literal(parts, text[position : match.start()], text)
        parts.append(parse_reference(match.group(1)))
        position = match.end()
    _add_literal(parts, text[position:], text)
    return Template(text, tuple(parts))


def _add_literal(parts: list[str | Reference], literal: str, text: str) -> None:
    if "{{" in literal:
        raise ValueError(f"'{{{{' without a closing '}}}}' in {text!r}")
    if literal:
        parts.append(literal)


def compile_json(value: Any, loc: Loc = ()) -> tuple[CompiledValue, list[tuple[Loc, str]]]:
    """Parse every string inside a JSON value; return the compiled value and all problems.

    A string that fails to parse compiles to a null placeholder; the caller must not render a
    value whose problem list is non-empty.
    """
    if isinstance(value, str):
        try:
            return parse_template(value), []
        except ValueError as exc:
            return Constant(None), [(loc, str(exc))]
    problems: list[tuple[Loc, str]] = []
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            compiled, found = compile_json(item, (*loc, index))
            items.append(compiled)
            problems += found
        return ListTemplate(tuple(items)), problems
    if isinstance(value, Mapping):
        pairs = []
        for key, item in value.items():
            if "{{" in str(key):
                problems.append(((*loc, key), "templates are not allowed in keys"))
            compiled, found = compile_json(item, (*loc, key))
            pairs.append((str(key), compiled))
            problems += found
        return ObjectTemplate(tuple(pairs)), problems
    return Constant(value), []


def compile_body(value: Any) -> CompiledValue:
    """Compile a JSON body; raise ValueError naming the first problem."""
    compiled, problems = compile_json(value)
    if problems:
        loc, message = problems[0]
        raise ValueError(f"{'.'.join(map(str, loc)) or 'value'}: {message}")
    return compiled


def compile_path(text: str) -> Template:
    """Parse a call path template; raise ValueError unless it is a safe absolute path.

    The literal part must start with a single ``/``, be printable ASCII without spaces, ``\\``
    or ``#``, and have no ``.``/``..`` segment (dots literal or ``%2e``); lookups are encoded at
    render time.
    """
    template = parse_template(text)
    skeleton = template.literal_text
    if not skeleton.startswith("/") or skeleton.startswith("//"):
        raise ValueError(f"path must start with a single '/', got {text!r}")
    if _PATH_UNSAFE_RE.search(skeleton):
        raise ValueError(f"path must be printable ASCII without spaces, '\\' or '#': {text!r}")
    path_part = skeleton.split("?", 1)[0]
    if any(_DOT_SEGMENT_RE.fullmatch(segment) for segment in path_part.split("/")):
        raise ValueError(f"path must not contain '.' or '..' segments: {text!r}")
    return template


def compile_header(text: str) -> Template:
    """Parse a header value template; raise ValueError if its literal text has CR, LF, NUL or
    an unpaired surrogate (the HTTP client could not send it)."""
    if any(c in text for c in _FORBIDDEN_IN_HEADER):
        raise ValueError("header value must not contain CR, LF or NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("header value must be valid Unicode") from None
    return parse_template(text)


def build_url(base_url: str, path: str) -> URL:
    """Join a service base URL and a rendered path, and prove the result stays on that service.

    Args:
        base_url: the service URL from config ``services`` (``http(s)://host[:port][/prefix]``).
        path: a path rendered by ``Template.render_path`` (may end in a literal ``?query``).

    Returns:
        A ``yarl.URL`` built with ``encoded=True``: pass it to aiohttp as is. (A ``str`` would be
        re-parsed by yarl, which decodes ``%2E%2E`` and then removes the dot segment.)

    Raises:
        TemplateError: if the joined URL would leave the base URL's scheme, host, port or path
            prefix, or contains a dot segment (``.``/``..``, dots literal or ``%2e``),
            whitespace, a control character or a fragment. No looked-up value is blamed
            (``root`` None): ``render_path`` has refused what a value could cause.
    """
    base = urlsplit(base_url)
    if base.query or base.fragment or base.scheme not in ("http", "https") or not base.netloc:
        raise TemplateError(f"service URL {base_url!r} must be http(s)://host[:port][/prefix]")
    if not path.startswith("/") or path.startswith("//") or _PATH_UNSAFE_RE.search(path):
        raise TemplateError(f"unsafe path {path!r} for service {base_url!r}")
    prefix = base.path.rstrip("/")
    joined = f"{base.scheme}://{base.netloc}{prefix}{path}"
    parts = urlsplit(joined)
    segments = parts.path.split("/")
    if (
        (parts.scheme, parts.netloc) != (base.scheme, base.netloc)
        or not (parts.path + "/").startswith(prefix + "/")
        or any(_DOT_SEGMENT_RE.fullmatch(segment) for segment in segments)
    ):
        raise TemplateError(f"path {path!r} would leave service {base_url!r}")
    return URL(joined, encoded=True)
