"""Every YAML and JSON file under deploy/ parses, and none is left out of the other checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deploy.tools import DEPLOY, REPO_ROOT

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses_into_mappings(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents
    assert all(isinstance(doc, dict) for doc in documents)


def test_dashboard_json_parses() -> None:
    files = sorted(DEPLOY.rglob("*.json"))
    assert [f.relative_to(DEPLOY).as_posix() for f in files] == [
        "grafana/dashboards/saga-sidecar.json"
    ]
    for file in files:
        assert isinstance(json.loads(file.read_text()), dict)


def test_deploy_holds_only_files_the_suite_checks() -> None:
    checked = {"Dockerfile", ".yaml", ".yml", ".json"}
    for file in DEPLOY.rglob("*"):
        if file.is_file():
            assert file.name in checked or file.suffix in checked, file.relative_to(REPO_ROOT)
