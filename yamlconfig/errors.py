"""The errors of YAML config and saga files.

``ConfigError`` is the one error a file raises: every ``FILE:LINE`` problem at once.
``KeyValueError`` is raised by a model's validator to blame a key below the value it validates
(a dict entry, a list item, one field of a model), so the problem is reported at that key's line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a YAML file, located by file and 1-based line."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """A YAML config or saga file is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.message))
        super().__init__("\n".join(str(i) for i in self.issues))


class KeyValueError(ValueError):
    """A validator's ``ValueError`` about ``key``, a path below the value being validated."""

    def __init__(self, key: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.key = key
