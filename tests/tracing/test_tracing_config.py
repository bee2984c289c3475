"""The ``tracing`` section: off by default, and every bad value is a ``FILE:LINE`` error."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import load_config


def write(tmp_path: Path, tracing: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"upstream: {{url: 'http://127.0.0.1:3000'}}\ntracing:\n{tracing}", "utf-8")
    return path


def test_tracing_is_off_unless_an_endpoint_is_set(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("upstream: {url: 'http://127.0.0.1:3000'}\n", encoding="utf-8")
    tracing = load_config(path).config.tracing
    assert tracing.endpoint == ""
    assert tracing.service_name == "saga-sidecar"
    assert tracing.sample_ratio == 1.0


def test_a_full_tracing_section_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "  endpoint: http://collector:4318/\n  service_name: checkout-sidecar\n"
        "  sample_ratio: 0.25\n  headers: {x-api-key: secret}\n  timeout: 2s\n",
    )
    tracing = load_config(path).config.tracing
    assert tracing.endpoint == "http://collector:4318"
    assert tracing.sample_ratio == 0.25
    assert tracing.headers == {"x-api-key": "secret"}
    assert tracing.timeout == 2.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("  endpoint: collector:4318\n", "tracing.endpoint: expected an http:// or https:// URL"),
        ("  sample_ratio: 1.5\n", "tracing.sample_ratio"),
        ("  headers: {'bad name': x}\n", "tracing.headers: not a valid header name: 'bad name'"),
        ("  timeout: 0s\n", "tracing.timeout: Input should be greater than 0"),
        ("  servce_name: x\n", "tracing.servce_name"),
    ],
)
def test_bad_tracing_values_are_errors_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    path = write(tmp_path, line)
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: " in err
    assert message in err
