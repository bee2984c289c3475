"""Each Promela model in models/ names the code it mirrors, and goes stale loudly.

A model's header lists the files whose protocol it models (``mirrors: a.lua b.py``) and a hash
of their contents (``mirrors-sha256: …``). When one of those files changes, this test fails until
someone re-reads the model against the new code and updates its stamp: a model-checked protocol
that no longer matches the code would be a false promise.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((ROOT / "models").glob("*.pml"))


def header_value(text: str, name: str) -> str:
    """The value of the model header line ``name: value``."""
    found = re.search(rf"^\s*\*?\s*{re.escape(name)}:\s*(.+?)\s*$", text, re.MULTILINE)
    assert found is not None, f"the model has no '{name}:' header line"
    return found.group(1)


def stamp(paths: list[str]) -> str:
    """sha256 over the mirrored files' bytes, in the order the header lists them."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update((ROOT / path).read_bytes())
    return digest.hexdigest()


def test_there_are_models_to_check() -> None:
    assert {model.stem for model in MODELS} >= {"idempotency", "saga_lease"}


@pytest.mark.parametrize("model", MODELS, ids=lambda path: path.stem)
def test_a_models_stamp_matches_the_code_it_mirrors(model: Path) -> None:
    text = model.read_text(encoding="utf-8")
    mirrored = header_value(text, "mirrors").split()
    for path in mirrored:
        assert (ROOT / path).is_file(), f"{model.name} mirrors {path}, which does not exist"
    recorded = header_value(text, "mirrors-sha256")
    current = stamp(mirrored)
    assert recorded == current, (
        f"{model.name} mirrors {' '.join(mirrored)}, which changed since the model was checked "
        f"against it: re-read the model, update it if the protocol changed, run `make verify`, "
        f"then set 'mirrors-sha256: {current}'"
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda path: path.stem)
def test_a_model_names_the_buggy_variant_it_must_catch(model: Path) -> None:
    assert "counterexample: -D" in model.read_text(encoding="utf-8")
