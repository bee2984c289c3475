"""Every saga definition named by the config's ``sagas.definitions`` globs, validated together.

``load_definitions`` reads each matched file, validates it, and then checks the files against each
other: saga names are unique, no two sagas share a trigger (method and path), and no trigger
takes a reserved route. Problems from all files are raised as one ``ConfigError``. A pattern that
matches no file (a glob over an empty directory, a plain name that does not exist) is an error,
located at that pattern in the config file: a mistyped path must not start a sidecar without sagas.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from saga_runner.definition import SagaDefinition, parse_definition
from yamlconfig.errors import ConfigError, ConfigIssue
from yamlconfig.loader import LocatedDocument, load_yaml

log = logging.getLogger("saga_sidecar.saga")

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

    def retaining(self, previous: SagaCatalog) -> SagaCatalog:
        """This catalog, still knowing ``previous``'s versions by hash (a reload): instances
        pinned to a version that is no longer in the files keep running under it, and show
        their step names, while new triggers start the versions loaded now."""
        return replace(self, by_hash={**previous.by_hash, **self.by_hash})

    def match(self, method: str, path: str) -> SagaDefinition | None:
        """The saga triggered by ``method`` on ``path``, if any."""
        return self.by_route.get((method.upper(), path))

    def __iter__(self) -> Iterator[SagaDefinition]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)


class Origin(Protocol):
    """Where the ``sagas.definitions`` setting was written (a config file with its lines)."""

    def issue(self, loc: Sequence[str | int], message: str) -> ConfigIssue:
        """A problem of the setting at ``loc`` (``("sagas", "definitions", 0)``)."""
        ...


DEFINITIONS_LOC = ("sagas", "definitions")
"""Where the globs are in the config file."""


def load_definitions(
    base_dir: Path,
    globs: Sequence[str],
    services: Collection[str] | None,
    reserved_routes: Iterable[Route] = (),
    env: Mapping[str, str] | None = None,
    *,
    origin: Origin | None = None,
    require_matches: bool = True,
    brokers: Collection[str] | None = None,
) -> SagaCatalog:
    """Load, validate and cross-check every saga file matched by ``globs``.

    Args:
        base_dir: directory relative globs resolve against (the config file's directory).
        globs: patterns like ``sagas/*.yaml`` (``**`` recurses); each must match a file.
        services: the config's ``services`` (only the names are used); None skips that check.
        reserved_routes: (method, path pattern) pairs no trigger may take; method ``*`` means
            any method and the path is an ``fnmatch`` pattern (``/admin/*``).
        env: environment for ``${VAR}`` substitution (default: ``os.environ``).
        origin: the config file, to locate a pattern that matches nothing (default: a
            document named ``<config>``).
        require_matches: a pattern that matches no file is an error (``check``); False logs it
            as a warning instead (``serve``: a sidecar whose saga files were all removed must
            still start, to fail the instances of the sagas it no longer has, with a reason).
        brokers: the config's ``sagas.brokers`` (only the names); None skips that check.

    Raises:
        ConfigError: listing every problem in every file.
    """
    where = origin or LocatedDocument("<config>", None)
    issues: list[ConfigIssue] = []
    loaded: list[tuple[SagaDefinition, LocatedDocument, Path]] = []
    files: dict[Path, None] = {}
    for index, pattern in enumerate(globs):
        matched = _matched_files(base_dir, pattern)
        if not matched:
            full = Path(base_dir, pattern)
            message = f"no file matches {pattern!r} (looked for {full})"
            issue = where.issue((*DEFINITIONS_LOC, index), f"{_dotted(index)}: {message}")
            if require_matches:
                issues.append(issue)
            else:
                log.warning("%s", issue, extra={"event": "definitions_glob_empty"})
        files.update(dict.fromkeys(matched))
    for path in files:
        try:
            doc = load_yaml(path, env)
            loaded.append((parse_definition(doc, services, brokers), doc, path))
        except ConfigError as exc:
            issues += exc.issues
    issues += _cross_file_issues(loaded, list(reserved_routes))
    if issues:
        raise ConfigError(issues)
    return SagaCatalog.of((definition, path) for definition, _, path in loaded)


def definition_files(base_dir: Path, globs: Sequence[str]) -> list[Path]:
    """Every file the ``globs`` name now, once each, in the order ``load_definitions`` reads them
    (what a file watch looks at)."""
    files: dict[Path, None] = {}
    for pattern in globs:
        files.update(dict.fromkeys(_matched_files(base_dir, pattern)))
    return list(files)


def _matched_files(base_dir: Path, pattern: str) -> list[Path]:
    """The files ``pattern`` names under ``base_dir`` (directories are skipped)."""
    full = Path(base_dir, pattern)
    if _GLOB_CHARS.isdisjoint(pattern):
        matches = [full] if full.exists() else []
    else:
        matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True))
    return [path.resolve() for path in matches if not path.is_dir()]


def _dotted(index: int) -> str:
    return f"{'.'.join(DEFINITIONS_LOC)}[{index}]"


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
