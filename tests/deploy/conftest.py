"""Fixtures of the deploy suite: the kustomize overlays rendered once per session.

Fixtures:
    overlay      the name of an overlay under deploy/kubernetes/overlays (parametrized).
    rendered     that overlay rendered by kustomize (``manifests.Rendered``).
"""

from __future__ import annotations

import pytest

from deploy.manifests import KUBERNETES, OVERLAYS, Rendered, render

_CACHE: dict[str, Rendered] = {}


def rendered_overlay(name: str) -> Rendered:
    """The overlay ``name`` rendered by kustomize, cached for the session."""
    if name not in _CACHE:
        _CACHE[name] = render(KUBERNETES / "overlays" / name)
    return _CACHE[name]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    """Each overlay in turn."""
    name: str = request.param
    return name


@pytest.fixture
def rendered(overlay: str) -> Rendered:
    """The overlay under test, rendered."""
    return rendered_overlay(overlay)
