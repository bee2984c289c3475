"""The JSON Schemas in docs/schema/ are those the models generate, and they fit the shipped files.

``docs/schema/config.json`` and ``saga.json`` are written by ``make schema`` from the pydantic
models; this test fails when a model changed and the committed files were not regenerated. The
schemas are valid JSON Schema (2020-12), accept every config and saga file the repository ships
(``${VAR}`` references included), and refuse what the models refuse in the ways an editor should
show: an unknown key, a value outside a closed set, a malformed duration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from proxy.schemas import SCHEMAS, render

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO_ROOT / "docs" / "schema"
CONFIGS = [
    REPO_ROOT / "config" / "sidecar.yaml",
    REPO_ROOT / "deploy" / "kubernetes" / "base" / "sidecar.yaml",
]
SAGAS = sorted(
    [
        *(REPO_ROOT / "config" / "sagas").glob("*.yaml"),
        *(REPO_ROOT / "deploy" / "kubernetes" / "base" / "sagas").glob("*.yaml"),
    ]
)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMA_DIR / f"{name}.json").read_text("utf-8")))


def problems(name: str, document: Any) -> list[str]:
    """Every schema error for ``document``, as ``path: message``."""
    found = validator(name).iter_errors(document)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in found)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_committed_schema_is_the_one_the_models_generate(name: str) -> None:
    committed = (SCHEMA_DIR / f"{name}.json").read_text("utf-8")
    assert committed == render(name), f"docs/schema/{name}.json is stale: run `make schema`"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_saga_sidecar_schema_prints_the_committed_file(name: str) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "proxy", "schema", name],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert printed.stdout == (SCHEMA_DIR / f"{name}.json").read_text("utf-8")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_schema_is_valid_json_schema_that_refuses_unknown_keys(name: str) -> None:
    schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    closed = [d for d in schema["$defs"].values() if d.get("type") == "object"]
    assert closed and all(d["additionalProperties"] is False for d in closed)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_config_fits_the_config_schema(path: Path) -> None:
    assert problems("config", yaml.safe_load(path.read_text("utf-8"))) == []


@pytest.mark.parametrize("path", SAGAS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_saga_fits_the_saga_schema(path: Path) -> None:
    assert problems("saga", yaml.safe_load(path.read_text("utf-8"))) == []


def test_the_config_schema_refuses_what_an_editor_should_underline() -> None:
    document = yaml.safe_load(
        """
        upstream: {url: "http://127.0.0.1:3000", timout: 5s}
        idempotency: {concurrent: block, ttl: 24 hours}
        limits: {max_request_body: "${MAX_BODY:-10MiB}", read_timeout: 60s}
        workers: "${WORKERS:-auto}"
        """
    )
    found = problems("config", document)
    assert len(found) == 3, found
    assert found[0].startswith("idempotency.concurrent: 'block' is not valid")
    assert found[1].startswith("idempotency.ttl: '24 hours' is not valid")
    assert "'timout' was unexpected" in found[2]


def test_the_saga_schema_refuses_what_an_editor_should_underline() -> None:
    document = yaml.safe_load(
        """
        name: pay
        mode: later
        trigger: {method: POST, path: /pay}
        steps:
          - name: charge
            action: {service: payments, method: POST, path: /charges, success: [200, "${OK}"]}
            retry: {attempts: "${ATTEMPTS:-3}", backoff: 100ms, max_backof: 5s}
            timeout: 5 s
        """
    )
    found = problems("saga", document)
    assert len(found) == 2, found
    assert found[0].startswith("mode: 'later' is not valid")
    assert "'max_backof' was unexpected" in found[1]
