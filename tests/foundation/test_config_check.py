"""``saga-sidecar check --config FILE`` as a subprocess: exit 0, or exit 2 with FILE:LINE errors.

Every problem in a file is reported in one run, each at the line of the offending key or value.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m proxy check --config config`` with a clean ``${VAR}`` environment."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        cwd=REPO_ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def check_in_process(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``main(["check", ...])`` in this process: its exit code and its stderr lines."""
    code = main(["check", "--config", str(config)])
    return code, capsys.readouterr().err.splitlines()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def test_every_problem_is_reported_at_its_line_in_one_run(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        listen: "127.0.0.1:8080"
        shutdown_grace: 30 seconds
        limits: {max_request_body: lots}
        admin:
          token: "${UNSET_ADMIN_TOKEN}"
          listen: "${BAD_REF:default}"
        upstream:
          timout: 5s
        idempotency:
          store: "${STORE:-memory://"
          ttl: .inf
        workers: many
        log: {format: xml}
        """,
    )
    result = check(path)
    assert result.returncode == 2
    assert result.stdout == ""
    f = str(path)
    assert result.stderr.splitlines() == [
        f"{f}:2: shutdown_grace: expected a duration like 250ms, 30s, 5m or 24h, got '30 seconds'",
        f"{f}:3: limits.max_request_body: expected a size like 16KiB or 100MiB, got 'lots'",
        f"{f}:5: admin.token: environment variable UNSET_ADMIN_TOKEN is not set "
        "(write ${UNSET_ADMIN_TOKEN:-default})",
        f"{f}:6: admin.listen: bad environment reference '${{BAD_REF:default}}' "
        "in '${BAD_REF:default}'",
        f"{f}:7: upstream.url: required key is missing",
        f"{f}:8: upstream.timout: unknown key, did you mean 'timeout'?",
        f"{f}:10: idempotency.store: unterminated '${{' in '${{STORE:-memory://'",
        f"{f}:11: idempotency.ttl: a duration must be finite, got inf",
        f"{f}:12: workers: expected a number of processes or 'auto', got 'many'",
        f"{f}:13: log.format: 'xml' is not one of 'json', 'text'",
    ]


def test_yaml_syntax_error_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        upstream:
          url: "http://127.0.0.1:3000"
        limits: {max_request_body: 1MiB
        log: {format: json}
        """,
    )
    result = check(path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{path}:4: YAML syntax error")


def test_missing_upstream_section_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: '127.0.0.1:8080'\n")
    result = check(path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{path}:1: upstream: required key is missing"]


def test_duplicate_keys_and_bad_nested_values_are_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
        upstream:
          url: "http://127.0.0.1:3000"
          url: "http://127.0.0.1:3001"
        idempotency:
          routes:
            - {path: /a, ttl: 1h}
            - {path: /b, ttl: soon}
        """,
    )
    assert check_in_process(path, capsys) == (
        2,
        [
            f"{path}:3: upstream.url: duplicate key",
            f"{path}:7: idempotency.routes[1].ttl: expected a duration like 250ms, 30s, 5m or 24h, "
            "got 'soon'",
        ],
    )


def test_environment_values_and_defaults_are_substituted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        """
        upstream:
          url: "${UPSTREAM_URL}"
          timeout: "${UPSTREAM_TIMEOUT:-250ms}"
        admin: {token: "${ADMIN_TOKEN:-}", listen: "127.0.0.1:$${PORT_IS_LITERAL:-1}"}
        """,
    )
    for name in ("UPSTREAM_URL", "UPSTREAM_TIMEOUT", "ADMIN_TOKEN", "PORT_IS_LITERAL"):
        monkeypatch.delenv(name, raising=False)
    assert check_in_process(path, capsys) == (
        2,
        [
            f"{path}:2: upstream.url: environment variable UPSTREAM_URL is not set "
            "(write ${UPSTREAM_URL:-default})",
            f"{path}:4: admin.listen: expected host:port like 0.0.0.0:8080, "
            "got '127.0.0.1:${PORT_IS_LITERAL:-1}'",
        ],
    )
    monkeypatch.setenv("UPSTREAM_URL", "http://127.0.0.1:3000")
    path.write_text(path.read_text().replace("$${PORT_IS_LITERAL:-1}", "9901"))
    assert check_in_process(path, capsys) == (0, [])
    loaded = load_config(path)
    assert loaded.config.upstream.url == "http://127.0.0.1:3000"
    assert loaded.config.upstream.timeout == 0.25
    assert loaded.config.admin.token == ""


def test_valid_config_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, "upstream: {url: 'http://127.0.0.1:3000'}\n")
    result = check(path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{path}: ok")


def test_bundled_config_is_valid() -> None:
    result = check(REPO_ROOT / "config" / "sidecar.yaml")
    assert result.returncode == 0, result.stderr


def test_unreadable_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "upstream: {url: 'http://127.0.0.1:3000'}\n")
    path.write_bytes(b"upstream: \xff\n")
    code, errors = check_in_process(path, capsys)
    assert code == 2
    assert errors[0].startswith(f"{path}:1: cannot read file")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "[1, 2]\n", "just a string\n"])
def test_empty_or_non_mapping_document_is_reported_not_a_traceback(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    code, errors = check_in_process(path, capsys)
    assert code == 2
    assert errors and all(line.startswith(f"{path}:1: ") for line in errors)
