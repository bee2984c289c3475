"""``saga-sidecar --version`` names the installed release, the one ``pyproject.toml`` declares."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_version_flag_prints_the_project_version_and_exits_0() -> None:
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]

    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"saga-sidecar {declared}"


def test_the_license_file_matches_the_declared_license() -> None:
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["license"]

    assert declared == "MIT"
    assert (REPO_ROOT / "LICENSE").read_text().startswith("MIT License\n")
