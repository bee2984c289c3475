"""Helpers for saga-definition tests: write a YAML string to a file and collect its errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from saga_runner.definition import SagaDefinition, load_definition
from yamlconfig.errors import ConfigError

SERVICES = {"orders": "http://127.0.0.1:3001", "payments": "http://127.0.0.1:3002"}

VALID = """\
name: demo
trigger: {method: POST, path: /api/demo}
business_id: "{{ input.order_no }}"
steps:
  - name: first
    action:
      service: orders
      method: POST
      path: /orders
      body: {order_no: "{{ input.order_no }}"}
    compensation:
      service: orders
      method: DELETE
      path: "/orders/{{ steps.first.body.id }}"
  - name: second
    action:
      service: payments
      method: POST
      path: /payments
      body: {order: "{{ steps.first.body.id }}"}
response:
  status: 201
  body: {first: "{{ steps.first.body }}", second: "{{ steps.second.body }}"}
"""


def write(tmp_path: Path, text: str, name: str = "saga.yaml") -> Path:
    """Write dedented ``text`` to ``tmp_path/name`` and return the path."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> SagaDefinition:
    """Load a saga file written from ``text`` against ``SERVICES``."""
    return load_definition(write(tmp_path, text), SERVICES, env={})


def errors(tmp_path: Path, text: str) -> list[str]:
    """The ``FILE:LINE: message`` lines (file shown as ``saga.yaml``) loading ``text`` raises."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_definition(path, SERVICES, env={})
    return [str(issue).replace(str(path), "saga.yaml") for issue in caught.value.issues]
