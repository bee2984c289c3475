"""The JSON Schemas of the sidecar's two kinds of YAML file, generated from their models.

``saga-sidecar schema config|saga`` prints one; ``make schema`` writes them to ``docs/schema/``
(``config.json``, ``saga.json``), where a test keeps them current. An editor running the YAML
language server validates and completes a file that starts with
``# yaml-language-server: $schema=PATH/docs/schema/config.json``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from proxy.config import SidecarConfig
from saga_runner.definition import SagaDefinition
from yamlconfig.schema import file_schema

SCHEMAS: dict[str, tuple[type[BaseModel], str]] = {
    "config": (SidecarConfig, "saga-sidecar config (sidecar.yaml)"),
    "saga": (SagaDefinition, "saga-sidecar saga definition"),
}
"""Each schema's name: the model it is generated from and its title."""


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema called ``name`` (a key of ``SCHEMAS``)."""
    model, title = SCHEMAS[name]
    return file_schema(model, title)


def render(name: str) -> str:
    """The JSON Schema called ``name`` as the text of its ``docs/schema/NAME.json`` file."""
    return json.dumps(schema(name), indent=2, ensure_ascii=False) + "\n"
