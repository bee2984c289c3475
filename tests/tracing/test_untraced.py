"""Tracing off (the default) costs nothing: the request path is the untraced one, no tracing
module is imported, and the client's ``traceparent`` reaches the app unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

SCRIPT = Path(__file__).with_name("untraced.py")


def test_untraced_sidecar_imports_no_opentelemetry_and_forwards_traceparent_unchanged() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == 200
    assert report["received"] == [["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]]
    assert report["built"] == {
        "middlewares": 1,
        "forwarder": "Forwarder",
        "decision": "_NullDecision",
    }
    assert report["tracing_modules"] == []
