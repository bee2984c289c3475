"""Random mutations of valid config and saga files: ``check`` says ``FILE:LINE: message`` (exit 2)
or accepts the file (exit 0); it never raises, never prints a traceback."""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile.conftest import examples
from proxy.cli import main

REPO = Path(__file__).resolve().parents[2]
BUNDLED_CONFIG = (REPO / "config" / "sidecar.yaml").read_text(encoding="utf-8")
BUNDLED_SAGA = (REPO / "config" / "sagas" / "payment.yaml").read_text(encoding="utf-8")
# Every section and key of docs/CONFIG.md, so mutations reach every validator.
FULL_CONFIG = """\
listen: "0.0.0.0:8080"
workers: 1
shutdown_grace: 30s
limits: {max_request_body: 100MiB, max_header_size: 16KiB, read_timeout: 60s}
admin:
  listen: "127.0.0.1:9901"
  token: "${ADMIN_TOKEN:-}"
  allow_public_without_token: false
upstream:
  url: "http://127.0.0.1:3000"
  timeout: 30s
services:
  orders: "http://127.0.0.1:3001"
  payments: "http://127.0.0.1:3002"
idempotency:
  store: "redis://127.0.0.1:6379/0"
  header: "Idempotency-Key"
  methods: [POST, PUT, PATCH]
  ttl: 24h
  lock_timeout: 60s
  require_key: false
  scope_headers: [Authorization]
  concurrent: reject
  on_store_error: reject
  unknown_outcome: hold
  key_secret: "${IDEMPOTENCY_KEY_SECRET:-}"
  max_body: 1MiB
  max_request_body: 10MiB
  routes:
    - {path: "/api/v1/payments", require_key: true, ttl: 48h}
    - {path: "/webhooks/*", enabled: false}
sagas:
  store: "postgresql://postgres@127.0.0.1:5432/test"
  definitions: ["sagas/*.yaml"]
  migrate: true
  recovery_interval: 5s
  lease: 15s
  retention: 30d
  brokers:
    jobs: {url: "amqp://guest:guest@127.0.0.1:5672/", callbacks: "saga.callbacks"}
    events: {url: "nats://127.0.0.1:4222", callbacks: "saga.callbacks"}
log: {format: json, level: info}
redact:
  headers: [Authorization, Cookie, Set-Cookie, X-Api-Key]
  fields: [card_number, cvv, password]
reload: {watch: false, interval: 2s}
tracing:
  endpoint: "http://127.0.0.1:4318"
  service_name: saga-sidecar
  sample_ratio: 0.5
  headers: {x-api-key: "${OTLP_KEY:-}"}
  timeout: 10s
"""
YAML_NOISE = [*":-,{}[]\"'&*!|>#%@`? \t\\$", "\x00", "\ufeff", "é", "\u2028", "{{", "}}"]
SCALARS = ["", "0", "-1", "1e999", "99999999999999999999", "true", "null", "~", "[]", "{}",
           "0s", "-5s", "1KiB", "x" * 300, "'unterminated", "&a", "*a", "!!python/object:os.system",
           "${UNSET_VARIABLE_X}", "${", "{{ input.x }}", "{{ steps.nope.body }}"]  # fmt: skip
ISSUE_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): \S")


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` with one to three random line- or character-level edits."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(lines) - 1))
        line = lines[index]
        edit = draw(st.sampled_from(["delete", "copy", "swap", "indent", "char", "drop", "value"]))
        if edit == "delete" and len(lines) > 1:
            del lines[index]
        elif edit == "copy":
            lines.insert(index, line)
        elif edit == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], line
        elif edit == "indent":
            lines[index] = " " * draw(st.integers(0, 6)) + line.lstrip()
        elif edit == "char":
            at = draw(st.integers(0, len(line)))
            lines[index] = line[:at] + draw(st.sampled_from(YAML_NOISE)) + line[at:]
        elif edit == "drop" and line:
            at = draw(st.integers(0, len(line) - 1))
            lines[index] = line[:at] + line[at + 1 :]
        elif edit == "value" and ":" in line:
            key = line.split(":", 1)[0]
            lines[index] = f"{key}: {draw(st.sampled_from(SCALARS))}"
    return "\n".join(lines) + "\n"


def check(config_text: str, saga_text: str) -> None:
    """Write both files, run ``saga-sidecar check`` in this process and judge what it said."""
    with tempfile.TemporaryDirectory(prefix="check-mutation-") as tmp:
        workdir = Path(tmp)
        (workdir / "sagas").mkdir()
        config = workdir / "sidecar.yaml"
        saga = workdir / "sagas" / "payment.yaml"
        config.write_text(config_text, encoding="utf-8")
        saga.write_text(saga_text, encoding="utf-8")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["check", "--config", str(config)])
        assert_located_or_accepted(code, err.getvalue(), config)


def assert_located_or_accepted(code: int, stderr: str, config: Path) -> None:
    """Exit 0 and silence, or exit 2 and only ``FILE:LINE: message`` lines about our files."""
    assert "Traceback" not in stderr
    if code == 0:
        assert stderr == ""
        return
    assert code == 2, stderr
    issues = [line for line in stderr.split("\n") if line.strip()]
    assert issues, "exit 2 without saying why"
    for issue in issues:
        match = ISSUE_RE.match(issue)
        assert match, f"not FILE:LINE: message: {issue!r}"
        path = Path(match["file"])
        assert path.is_relative_to(config.parent), issue  # ours, or a file the config names
        lines = len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0
        assert 1 <= int(match["line"]) <= lines + 1, issue


def alias_bomb(levels: int = 9) -> str:
    """YAML whose aliases expand to 9**levels strings ("billion laughs")."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


EXPANDING = {
    "alias-bomb": alias_bomb(),
    "recursive-alias": "x: &a [*a]\n",
    "nested-5000-deep": "x: " + "[" * 5000 + "]" * 5000 + "\n",
    "nested-100-deep-mapping": "x: " + "{a: " * 100 + "1" + "}" * 100 + "\n",
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("extra", EXPANDING.values(), ids=EXPANDING.keys())
def test_documents_that_expand_without_bound_are_located_errors_not_hangs(extra: str) -> None:
    check(BUNDLED_CONFIG + extra, BUNDLED_SAGA)
    check(BUNDLED_CONFIG, BUNDLED_SAGA + extra)


def test_the_unmutated_files_pass() -> None:
    for config_text in (BUNDLED_CONFIG, FULL_CONFIG):
        check(config_text, BUNDLED_SAGA)


MUTATION_SETTINGS = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@MUTATION_SETTINGS
@given(
    config_text=st.sampled_from([BUNDLED_CONFIG, FULL_CONFIG]).flatmap(mutated),
)
def test_mutated_config_is_located_or_accepted(config_text: str) -> None:
    check(config_text, BUNDLED_SAGA)


@MUTATION_SETTINGS
@given(saga_text=mutated(BUNDLED_SAGA))
def test_mutated_saga_file_is_located_or_accepted(saga_text: str) -> None:
    check(BUNDLED_CONFIG, saga_text)
