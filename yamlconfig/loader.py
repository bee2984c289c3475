"""YAML loading that remembers where every value came from, for ``FILE:LINE: message`` errors.

``load_yaml`` parses a file with the safe loader, rejects duplicate keys, substitutes
``${VAR}`` / ``${VAR:-default}`` from the environment in every string, and records the line of
every mapping key and sequence item. ``validate`` turns the data into a pydantic model and maps
each validation error back to a line (worded by ``messages``), raising one ``ConfigError`` that
lists all of them — together with the substitution problems of a document loaded with
``defer_issues=True``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from yamlconfig.errors import ConfigError, ConfigIssue, KeyValueError
from yamlconfig.messages import describe

Loc = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)
_ABSENT = object()
_MERGE_TAG = "tag:yaml.org,2002:merge"

# Bounds on what one document may expand to: nested aliases ("billion laughs") or a recursive
# alias would otherwise hang ``check`` and ``serve``, and deep nesting overflow the stack.
MAX_DEPTH = 64
MAX_VALUES = 100_000

_ENV_RE = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LocatedDocument:
    """Parsed YAML data plus the 1-based line of every key path in it.

    ``issues`` holds the substitution problems of a document loaded with ``defer_issues=True``
    and ``bad_locs`` the values they concern (left unsubstituted), so ``validate`` can report
    them together with the validation errors, without a second error for the same value.
    """

    file: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    issues: tuple[ConfigIssue, ...] = ()
    bad_locs: frozenset[Loc] = frozenset()

    def line_of(self, loc: Sequence[str | int]) -> int:
        """Return the line of ``loc``, or of its deepest ancestor that exists in the file."""
        path = tuple(loc)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def issue(self, loc: Sequence[str | int], message: str) -> ConfigIssue:
        """Build a ConfigIssue located at ``loc``."""
        return ConfigIssue(self.file, self.line_of(loc), message)


def substitute_env(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    Raises:
        ValueError: on an unset variable without default or a malformed reference.
    """

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$$":
            return "$"
        inner = match.group(1)
        if inner is None:
            raise ValueError(f"unterminated '${{' in {text!r}")
        name, sep, default = inner.partition(":-")
        if not _ENV_NAME_RE.match(name):
            raise ValueError(f"bad environment reference '${{{inner}}}' in {text!r}")
        if name in env:
            return env[name]
        if sep:
            return default
        raise ValueError(f"environment variable {name} is not set (write ${{{name}:-default}})")

    return _ENV_RE.sub(replace, text)


def load_yaml(
    path: Path | str, env: Mapping[str, str] | None = None, *, defer_issues: bool = False
) -> LocatedDocument:
    """Read and parse ``path``.

    Raises:
        ConfigError: on a syntax error, and listing every substitution problem unless
            ``defer_issues`` (then they are kept in the document for ``validate`` to report).
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, 1, f"cannot read file: {exc}")]) from exc
    return parse_yaml(text, file, os.environ if env is None else env, defer_issues=defer_issues)


def parse_yaml(
    text: str, file: str, env: Mapping[str, str], *, defer_issues: bool = False
) -> LocatedDocument:
    """Parse YAML ``text`` that came from ``file`` (see ``load_yaml``)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError([ConfigIssue(file, 1, "YAML error: nested too deeply")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError([ConfigIssue(file, line, f"YAML syntax error: {problem}")]) from exc
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError([ConfigIssue(file, line, f"YAML error: {_one_line(exc)}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, f"YAML error: {_one_line(exc)}")]) from exc
    if node is None:
        return LocatedDocument(file, None, {(): 1})
    builder = _Builder(file, env)
    try:
        data = builder.build(node, ())
    except _TooLarge as exc:
        raise ConfigError([*builder.issues, exc.issue]) from None
    if builder.issues and not defer_issues:
        raise ConfigError(builder.issues)
    return LocatedDocument(
        file, data, builder.lines, tuple(builder.issues), frozenset(builder.bad_locs)
    )


class _TooLarge(Exception):
    """The document nests deeper than ``MAX_DEPTH`` or expands past ``MAX_VALUES`` values."""

    def __init__(self, issue: ConfigIssue) -> None:
        super().__init__(issue.message)
        self.issue = issue


class _Builder:
    """Turns a composed YAML node tree into plain data, recording lines and problems."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[Loc, int] = {}
        self.issues: list[ConfigIssue] = []
        self.bad_locs: set[Loc] = set()
        self._constructor = yaml.SafeLoader("")
        self._values = 0

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self._values += 1
        if len(loc) > MAX_DEPTH or self._values > MAX_VALUES:
            problem = (
                f"nested more than {MAX_DEPTH} levels deep"
                if len(loc) > MAX_DEPTH
                else f"the document expands to more than {MAX_VALUES} values (nested aliases?)"
            )
            line = node.start_mark.line + 1
            raise _TooLarge(ConfigIssue(self.file, line, f"{_dotted(loc[:3])}: {problem}"))
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            key = self._constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                self._add(key_node, f"{_dotted(loc) or 'document'}: keys must be plain scalars")
                continue
            key = str(key) if not isinstance(key, str) else key
            if key in result:
                self._add(key_node, f"{_dotted((*loc, key))}: duplicate key")
                continue
            child = (*loc, key)
            self.lines.setdefault(child, key_node.start_mark.line + 1)
            result[key] = self.build(value_node, child)
        for merge in merges:
            self._merge(result, merge, loc)
        return result

    def _merge(self, result: dict[Any, Any], merge: yaml.Node, loc: Loc) -> None:
        """Apply ``<<: *anchor`` (or a list of anchors): keys already set win, then earlier ones."""
        sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self._add(source, f"{_dotted(loc) or 'document'}: '<<' merges only mappings")
                continue
            for key, value in self._mapping(source, loc).items():
                result.setdefault(key, value)

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        try:
            value = self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # e.g. a tag the safe loader refuses (!!python/...)
            self._add(node, f"{_dotted(loc) or 'value'}: {_one_line(exc)}")
            return None
        if isinstance(value, str) and "$" in value:
            try:
                return substitute_env(value, self.env)
            except ValueError as exc:
                self._add(node, f"{_dotted(loc) or 'value'}: {exc}")
                self.bad_locs.add(loc)
        return value

    def _add(self, node: yaml.Node, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, node.start_mark.line + 1, message))


def _one_line(exc: yaml.YAMLError) -> str:
    """The problem an exception states, without PyYAML's multi-line position details."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        return " ".join(str(p) for p in (exc.context, exc.problem) if p)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def document_loc(data: Any, loc: Sequence[str | int]) -> Loc:
    """The part of a pydantic error location that names keys and items of the document.

    Drops what pydantic adds below a value that has no children in the file: union member tags
    (``workers.int``) and ``[key]`` markers, and the tags of tagged unions, which the models name
    in brackets for this (``[step]``).
    """
    kept: list[str | int] = []
    node = {} if data is None else data
    for part in loc:
        if isinstance(part, str) and "[" in part:
            continue
        if isinstance(node, dict):
            node = node.get(part, _ABSENT)
        elif isinstance(node, list) and isinstance(part, int):
            node = node[part] if 0 <= part < len(node) else _ABSENT
        elif node is not _ABSENT:
            continue
        kept.append(part)
    return tuple(kept)


def validation_issues(
    doc: LocatedDocument, exc: ValidationError, model: type[BaseModel]
) -> list[ConfigIssue]:
    """Map every pydantic error in ``exc`` (validating ``model``) to a located ConfigIssue.

    A validator's ``KeyValueError`` moves the issue down to the key it names. Errors about a
    value whose substitution already failed (``doc.bad_locs``) are left out.
    """
    issues = []
    for error in exc.errors():
        loc = document_loc(doc.data, error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, KeyValueError):
            loc = (*loc, *cause.key)
        if loc in doc.bad_locs:
            continue
        where = _dotted(loc) or "document"
        issues.append(doc.issue(loc, f"{where}: {describe(error, model, loc)}"))
    return issues


def validate(doc: LocatedDocument, model: type[ModelT]) -> ModelT:
    """Validate ``doc.data`` as ``model``.

    Raises:
        ConfigError: listing every located problem, the document's own ``issues`` included.
    """
    data = {} if doc.data is None else doc.data
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([*doc.issues, *validation_issues(doc, exc, model)]) from exc
    if doc.issues:
        raise ConfigError(list(doc.issues))
    return result
