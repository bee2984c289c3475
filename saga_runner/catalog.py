"""Every saga definition named by the config's ``sagas.definitions`` globs, validated together.

``load_definitions`` reads each matched file, validates it, and then checks the files against each
other: saga names are unique, no two sagas share a trigger (method and path), and no trigger
takes a reserved route. Problems from all files are raised as one ``ConfigError``. A glob that
matches nothing is fine (an empty directory means no sagas); a plain file name that does not exist
is an error.
"""

from __future__ import annotations

import fnmatch
import glob
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saga_runner.definition import SagaDefinition, parse_definition
from yamlconfig.errors import ConfigError, ConfigIssue
from yamlconfig.loader import LocatedDocument, load_yaml

Route = tuple[str, str]
"""A (METHOD, path) pair."""

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class SagaCatalog:
    """The loaded saga definitions, looked up by trigger route, name or definition hash."""

    by_route: Mapping[Route, SagaDefinition] = field(default_factory=dict)
    """Definitions by (upper-case method, exact path) of their trigger."""

    by_name: Mapping[str, SagaDefinition] = field(default_factory=dict)
    """Definitions by saga name."""

    by_hash: Mapping[str, SagaDefinition] = field(default_factory=dict)
    """Definitions by ``definition_hash``."""

    sources: Mapping[str, Path] = field(default_factory=dict)
    """The file each saga (by name) was loaded from."""

    @classmethod
    def of(cls, loaded: Iterable[tuple[SagaDefinition, Path]]) -> SagaCatalog:
        """Index already validated definitions (each with the file it came from)."""
        pairs = list(loaded)
        return cls(
            by_route={(d.trigger.method, d.trigger.path): d for d, _ in pairs},
            by_name={d.name: d for d, _ in pairs},
            by_hash={d.definition_hash: d for d, _ in pairs},
            sources={d.name: path for d, path in pairs},
        )

    def match(self, method: str, path: str) -> SagaDefinition | None:
        """The saga triggered by ``method`` on ``path``, if any."""
        return self.by_route.get((method.upper(), path))

    def __iter__(self) -> Iterator[SagaDefinition]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)


def load_definitions(
    base_dir: Path,
    globs: Sequence[str],
    services: Collection[str],
    reserved_routes: Iterable[Route] = (),
    env: Mapping[str, str] | None = None,
) -> SagaCatalog:
    """Load, validate and cross-check every saga file matched by ``globs``.

    Args:
        base_dir: directory relative globs resolve against (the config file's directory).
        globs: patterns like ``sagas/*.yaml`` (``**`` recurses); a plain name must exist.
        services: the config's ``services`` (only the names are used).
        reserved_routes: (method, path pattern) pairs no trigger may take; method ``*`` means
            any method and the path is an ``fnmatch`` pattern (``/admin/*``).
        env: environment for ``${VAR}`` substitution (default: ``os.environ``).

    Raises:
        ConfigError: listing every problem in every file.
    """
    issues: list[ConfigIssue] = []
    loaded: list[tuple[SagaDefinition, LocatedDocument, Path]] = []
    for path in _matched_files(base_dir, globs):
        try:
            doc = load_yaml(path, env)
            loaded.append((parse_definition(doc, services), doc, path))
        except ConfigError as exc:
            issues += exc.issues
    issues += _cross_file_issues(loaded, list(reserved_routes))
    if issues:
        raise ConfigError(issues)
    return SagaCatalog.of((definition, path) for definition, _, path in loaded)


def _matched_files(base_dir: Path, globs: Sequence[str]) -> list[Path]:
    seen: dict[Path, None] = {}
    for pattern in globs:
        full = Path(base_dir, pattern)
        if _GLOB_CHARS.isdisjoint(pattern):
            matches = [full]
        else:
            matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True))
        for path in matches:
            if not path.is_dir():
                seen.setdefault(path.resolve() if path.exists() else path, None)
    return list(seen)


def _cross_file_issues(
    loaded: Sequence[tuple[SagaDefinition, LocatedDocument, Path]], reserved: Sequence[Route]
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    names: dict[str, LocatedDocument] = {}
    routes: dict[Route, LocatedDocument] = {}
    for definition, doc, _ in loaded:
        first = names.setdefault(definition.name, doc)
        if first is not doc:
            where = f"{first.file}:{first.line_of(('name',))}"
            issues.append(
                doc.issue(
                    ("name",), f"name: saga {definition.name!r} is already defined at {where}"
                )
            )
        method, path = route = (definition.trigger.method, definition.trigger.path)
        first = routes.setdefault(route, doc)
        if first is not doc:
            where = f"{first.file}:{first.line_of(('trigger',))}"
            issues.append(
                doc.issue(
                    ("trigger",),
                    f"trigger: {method} {path} is already the trigger of the saga at {where}",
                )
            )
        if any(_reserved_match(route, r) for r in reserved):
            issues.append(
                doc.issue(
                    ("trigger", "path"),
                    f"trigger.path: {method} {path} is a reserved route of the sidecar",
                )
            )
    return issues


def _reserved_match(route: Route, reserved: Route) -> bool:
    method, pattern = reserved
    return method in ("*", route[0]) and fnmatch.fnmatchcase(route[1], pattern)
