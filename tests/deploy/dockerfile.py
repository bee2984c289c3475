"""A small Dockerfile reader, enough to check deploy/Dockerfile and replay its builder stage.

``parse_dockerfile`` splits the file into stages of instructions (continuation lines joined,
comments dropped). ``Stage`` answers what the tests ask: its ARG defaults, ENV, COPY sources,
RUN commands, ENTRYPOINT/CMD and HEALTHCHECK command; ``Dockerfile.inherited`` the USER in effect.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword (upper case) and the rest of the line."""

    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of a CMD/ENTRYPOINT/HEALTHCHECK value."""
        text = self.value
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1]
        parsed = json.loads(text)
        assert isinstance(parsed, list), f"{self.keyword} is not in exec form: {self.value}"
        return [str(item) for item in parsed]


@dataclass
class Stage:
    """A build stage: ``FROM base AS name`` and its instructions."""

    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Every instruction with ``keyword``."""
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        """The last instruction with ``keyword`` (the one in effect)."""
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]

    def args(self) -> dict[str, str]:
        """``ARG name=default`` declarations."""
        result = {}
        for arg in self.all("ARG"):
            name, _, default = arg.value.partition("=")
            result[name.strip()] = default.strip()
        return result

    def env(self) -> dict[str, str]:
        """``ENV k=v ...`` declarations (quotes removed, ``$VAR`` left as written)."""
        result: dict[str, str] = {}
        for env in self.all("ENV"):
            for word in shlex.split(env.value):
                key, _, value = word.partition("=")
                result[key] = value
        return result

    def copies(self) -> list[tuple[list[str], str, str | None]]:
        """``(sources, destination, from_stage)`` of every COPY."""
        result = []
        for copy in self.all("COPY"):
            words = copy.value.split()
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            source_stage = next(
                (f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None
            )
            result.append((paths[:-1], paths[-1], source_stage))
        return result


@dataclass
class Dockerfile:
    """The global ARGs and the stages of a Dockerfile."""

    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        """The stage named ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise AssertionError(f"no stage {name!r}")

    def lineage(self, name: str) -> list[Stage]:
        """``name`` and the stages it is built ``FROM``, the most basic first."""
        chain = [self.stage(name)]
        names = {s.name for s in self.stages}
        while chain[0].base in names:
            chain.insert(0, self.stage(chain[0].base))
        return chain

    def inherited(self, name: str, keyword: str) -> Instruction:
        """The ``keyword`` instruction in effect in stage ``name`` (own or inherited)."""
        for stage in reversed(self.lineage(name)):
            found = stage.all(keyword)
            if found:
                return found[-1]
        raise AssertionError(f"stage {name} has no {keyword}")


def logical_lines(text: str) -> list[str]:
    """Lines with ``\\`` continuations joined and comment lines dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    return [line for line in lines if line]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse ``path`` into global ARGs and stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", value.strip(), re.IGNORECASE)
            assert match, f"cannot read FROM {value}"
            stages.append(Stage(match.group(1), match.group(2) or str(len(stages))))
        elif not stages and keyword == "ARG":
            name, _, default = value.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, value.strip()))
    return Dockerfile(global_args, stages)
