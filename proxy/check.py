"""``saga-sidecar check``: every problem of the config and its saga files, and (``--connect``)
whether the stores and brokers they name answer.

The config's problems do not hide the saga files' ones: when the config is invalid, the saga
files are still found from its ``sagas.definitions`` (and checked against its ``services`` when
that section is itself valid). Exit codes: ``EXIT_OK`` (0) all valid and, with ``--connect``,
every store reached; ``EXIT_INVALID`` (2) problems, each printed as ``FILE:LINE: message``;
``EXIT_UNREACHABLE`` (3) files valid but a store cannot be reached, each named with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from proxy.config import (
    CallbacksConfig,
    LoadedConfig,
    SagasConfig,
    SidecarConfig,
    reserved_path,
    reserved_routes,
)
from proxy.dependencies import dependencies, reach
from saga_runner.catalog import DEFINITIONS_LOC, SagaCatalog, load_definitions
from saga_runner.errors import TemplateError, TemplateRoot
from saga_runner.redact import Redactor
from saga_runner.template import Reference, parse_template
from yamlconfig.errors import ConfigError, ConfigIssue
from yamlconfig.loader import LocatedDocument, load_yaml, validate

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_UNREACHABLE = 3

_GLOBS = TypeAdapter(tuple[str, ...])


@dataclass(frozen=True)
class Findings:
    """What checking the files found: the config's problems, then the saga files' ones."""

    issues: list[ConfigIssue]
    loaded: LoadedConfig | None
    sagas: int
    warnings: tuple[str, ...] = ()


def missing_file(path: Path) -> str | None:
    """One plain sentence when ``path`` is not a file to read a config from, else None."""
    if path.is_dir():
        return f"the config file {path} is a directory"
    if not path.exists():
        return f"there is no config file at {path} (give one with --config FILE)"
    return None


def check_files(path: Path, env: Mapping[str, str] | None = None) -> Findings:
    """Validate the config at ``path`` and every saga file it names; collect every problem."""
    try:
        doc = load_yaml(path, env, defer_issues=True)
    except ConfigError as exc:  # unreadable, or not YAML: nothing more can be known
        return Findings(exc.issues, None, 0)
    issues: list[ConfigIssue] = []
    loaded: LoadedConfig | None = None
    try:
        config = validate(doc, SidecarConfig)
    except ConfigError as exc:
        issues += exc.issues
        globs, services = _salvaged(doc)
    else:
        loaded = LoadedConfig(path=path.resolve(), config=config, lines=doc.lines)
        globs = None if config.sagas is None else config.sagas.definitions
        services = config.services
    if globs is None:
        return Findings(issues, loaded, 0)
    base_dir = path.resolve().parent
    try:
        reserved = reserved_routes(*_own_paths(doc))
        catalog = load_definitions(
            base_dir, globs, services, reserved, env=env, origin=doc, brokers=_broker_names(doc)
        )
    except ConfigError as exc:
        return Findings(issues + exc.issues, loaded, 0)
    warnings = () if loaded is None else unsealed_redactions(loaded.config, catalog)
    return Findings(issues, loaded, len(catalog), warnings)


def unsealed_redactions(config: SidecarConfig, catalog: SagaCatalog) -> tuple[str, ...]:
    """A warning per saga whose calls use redacted values while no encryption keys are set.

    Such a saga, resumed from its (redacted) records, fails the step needing the value.
    """
    if config.sagas is None or config.sagas.encryption_keys:
        return ()
    redactor = Redactor(config.redact.headers, config.redact.fields)
    warnings = []
    for definition in catalog.by_name.values():
        snapshot = definition.to_snapshot()
        names = sorted(
            {str(ref) for ref in _references(snapshot["steps"]) if _redacted(ref, redactor)}
        )
        if names:
            warnings.append(
                f"warning: saga {definition.name} uses {', '.join(names)}, redacted when stored:"
                " with no sagas.encryption_keys set, a saga resumed after a restart fails the"
                " step needing it"
            )
    return tuple(warnings)


def _references(value: Any) -> Iterator[Reference]:
    if isinstance(value, str) and "{{" in value:
        with contextlib.suppress(TemplateError):
            yield from parse_template(value).references
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _redacted(ref: Reference, redactor: Redactor) -> bool:
    if ref.root is TemplateRoot.HEADERS:
        return ref.segments[1].lower() in redactor.headers
    if ref.root is TemplateRoot.INPUT:
        return any(segment.lower() in redactor.fields for segment in ref.segments[1:])
    return False


def _salvaged(doc: LocatedDocument) -> tuple[Sequence[str] | None, Collection[str] | None]:
    """The definitions globs and service names of an invalid config, as far as they are valid.

    No globs (None) when there is no ``sagas`` section or its ``definitions`` is itself invalid
    (reported already); no service names (None: not checked) when ``services`` is invalid.
    """
    data = doc.data if isinstance(doc.data, dict) else {}
    sagas = data.get("sagas")
    services = data.get("services", {})
    names = list(services) if isinstance(services, dict) else None
    if not isinstance(sagas, dict):
        return None, names
    default = SagasConfig.model_fields[DEFINITIONS_LOC[1]].default
    try:
        return _GLOBS.validate_python(sagas.get(DEFINITIONS_LOC[1], default)), names
    except ValidationError:
        return None, names


def _broker_names(doc: LocatedDocument) -> Collection[str] | None:
    """The names under ``sagas.brokers`` of a config, valid or not (None: not a mapping, so
    saga files' brokers are not checked; the config's error says why)."""
    data = doc.data if isinstance(doc.data, dict) else {}
    sagas = data.get("sagas")
    brokers = sagas.get("brokers", {}) if isinstance(sagas, dict) else {}
    return list(brokers) if isinstance(brokers, dict) else None


def _own_paths(doc: LocatedDocument) -> tuple[str, str]:
    """``sagas.status_path`` and ``sagas.callbacks.path`` of a config, valid or not (each its
    default when itself invalid)."""
    data = doc.data if isinstance(doc.data, dict) else {}
    sagas = data.get("sagas")
    sagas = sagas if isinstance(sagas, dict) else {}
    callbacks = sagas.get("callbacks")
    callbacks = callbacks if isinstance(callbacks, dict) else {}
    return (
        _valid_path(sagas.get("status_path"), SagasConfig.model_fields["status_path"].default),
        _valid_path(callbacks.get("path"), CallbacksConfig.model_fields["path"].default),
    )


def _valid_path(value: Any, default: str) -> str:
    with contextlib.suppress(ValueError):
        if isinstance(value, str):
            return reserved_path(value)
    return default


def run(path: Path, *, connect: bool, timeout: float) -> int:
    """``saga-sidecar check``: print what was found; return the exit code."""
    sentence = missing_file(path)
    if sentence is not None:
        print(f"saga-sidecar: {sentence}", file=sys.stderr)
        return EXIT_INVALID
    found = check_files(path)
    for issue in found.issues:
        print(issue, file=sys.stderr)
    if found.issues or found.loaded is None:
        return EXIT_INVALID
    print(f"{path}: ok ({found.sagas} saga definition{'s' if found.sagas != 1 else ''})")
    for warning in found.warnings:
        print(warning, file=sys.stderr)
    if not connect:
        return EXIT_OK
    stores = dependencies(found.loaded)
    # What the clients log as they fail (aiormq: "error when creating transport") would reach
    # stderr through logging's last resort; each failure is said below instead.
    logging.getLogger().addHandler(logging.NullHandler())
    problems = asyncio.run(reach(stores, timeout))
    for store, problem in zip(stores, problems, strict=True):
        print(store.describe(problem), file=sys.stdout if problem is None else sys.stderr)
    return EXIT_UNREACHABLE if any(p is not None for p in problems) else EXIT_OK
