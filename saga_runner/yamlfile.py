"""YAML loading that remembers where every value came from, for ``FILE:LINE: message`` errors.

``load_yaml`` parses a file with the safe loader, rejects duplicate keys, substitutes
``${VAR}`` / ``${VAR:-default}`` from the environment in every string, and records the line of
every mapping key and sequence item. ``validate`` turns the data into a pydantic model and maps
each validation error back to a line, raising one ``ConfigError`` that lists all of them.
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

from saga_runner.errors import ConfigError, ConfigIssue

Loc = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)

_ENV_RE = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LocatedDocument:
    """Parsed YAML data plus the 1-based line of every key path in it."""

    file: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

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


def load_yaml(path: Path | str, env: Mapping[str, str] | None = None) -> LocatedDocument:
    """Read and parse ``path``; raise ConfigError listing every syntax or substitution problem."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, 1, f"cannot read file: {exc}")]) from exc
    return parse_yaml(text, file, os.environ if env is None else env)


def parse_yaml(text: str, file: str, env: Mapping[str, str]) -> LocatedDocument:
    """Parse YAML ``text`` that came from ``file`` (see ``load_yaml``)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError([ConfigIssue(file, line, f"YAML syntax error: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, f"YAML error: {exc}")]) from exc
    if node is None:
        return LocatedDocument(file, None, {(): 1})
    builder = _Builder(file, env)
    data = builder.build(node, ())
    if builder.issues:
        raise ConfigError(builder.issues)
    return LocatedDocument(file, data, builder.lines)


class _Builder:
    """Turns a composed YAML node tree into plain data, recording lines and problems."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[Loc, int] = {}
        self.issues: list[ConfigIssue] = []
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self._constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                self._add(key_node, f"{_dotted(loc) or 'document'}: keys must be plain scalars")
                continue
            key = str(key) if not isinstance(key, str) else key
            if key in result:
                self._add(key_node, f"{_dotted((*loc, key))}: duplicate key")
                continue
            child = (*loc, key)
            self.lines[child] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, child)
        return result

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        try:
            value = self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._add(node, f"{_dotted(loc)}: {exc}")
            return None
        if isinstance(value, str) and "$" in value:
            try:
                return substitute_env(value, self.env)
            except ValueError as exc:
                self._add(node, f"{_dotted(loc) or 'value'}: {exc}")
        return value

    def _add(self, node: yaml.Node, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, node.start_mark.line + 1, message))


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def validation_issues(doc: LocatedDocument, exc: ValidationError) -> list[ConfigIssue]:
    """Map every pydantic error in ``exc`` to a located ConfigIssue."""
    issues = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if isinstance(p, int) or "[" not in str(p))
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        where = _dotted(loc) or "document"
        issues.append(doc.issue(loc, f"{where}: {message}"))
    return issues


def validate(doc: LocatedDocument, model: type[ModelT]) -> ModelT:
    """Validate ``doc.data`` as ``model``; raise ConfigError listing every located problem."""
    data = {} if doc.data is None else doc.data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_issues(doc, exc)) from exc
