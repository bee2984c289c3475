"""``sagas.encryption_keys``: validated as base64 AES-256 keys; ``check`` warns without them.

A saga whose calls use a redacted input field or header cannot render them after a restart
unless the keys are set, so ``check`` says so at start (a warning: the config stays valid).
"""

from __future__ import annotations

import base64
import os
import textwrap
from pathlib import Path

import pytest

from proxy.cli import main

SAGA = """
name: pay
trigger: {method: POST, path: /api/pay}
steps:
  - name: charge
    action:
      service: payments
      method: POST
      path: /charges
      headers: {Authorization: "{{ headers.authorization }}"}
      body: {card: "{{ input.payer.card_number }}", amount: "{{ input.amount }}"}
"""


def write_config(tmp_path: Path, keys: list[str]) -> Path:
    (tmp_path / "sagas").mkdir()
    (tmp_path / "sagas" / "pay.yaml").write_text(textwrap.dedent(SAGA), encoding="utf-8")
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "upstream: {url: 'http://127.0.0.1:3000'}\n"
        "services: {payments: 'http://127.0.0.1:3001'}\n"
        f"sagas: {{store: 'sqlite:///sagas.db', encryption_keys: {keys!r}}}\n",
        encoding="utf-8",
    )
    return path


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--config", str(path)])
    return code, capsys.readouterr().err


def test_check_warns_when_sagas_use_redacted_values_and_no_keys_are_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_check(write_config(tmp_path, []), capsys)

    assert code == 0
    assert err.splitlines() == [
        "warning: saga pay uses headers.authorization, input.payer.card_number, redacted when"
        " stored: with no sagas.encryption_keys set, a saga resumed after a restart fails the"
        " step needing it"
    ]


def test_check_is_quiet_with_keys_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    assert run_check(write_config(tmp_path, [key]), capsys) == (0, "")


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("not base64!", "an encryption key must be base64"),
        (base64.b64encode(b"short").decode(), "an encryption key must decode to 32 bytes, not 5"),
    ],
)
def test_a_key_that_is_not_32_base64_bytes_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, problem: str
) -> None:
    code, err = run_check(write_config(tmp_path, [key]), capsys)

    assert code == 2
    assert problem in err
