"""Property: whatever the shape (steps, parallel groups, TCC) and whatever each step's call does
(succeeds, is refused, or times out after or before taking effect), every effect that may have
happened is undone exactly once, stages newest first, or the saga completes with nothing undone.

Each example builds a random saga and runs it on the engine (both stores) against ``Ledger``, a
real aiohttp service on 127.0.0.1 that journals every call and, like an idempotent service,
answers a repeated key from what it stored.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_runner.definition import SagaDefinition
from saga_runner.engine import SagaEngine
from saga_runner.states import SagaStatus
from sagas.conftest import EngineFactory
from sagas.services import FakeServices

TIMEOUT = 0.5  # an answered call never nears it, even on a loaded machine (0.2 s was hit in CI)
ONE_TRY = {"attempts": 1, "backoff": "10ms", "multiplier": 2, "max_backoff": "20ms"}
FAST = {"attempts": 3, "backoff": "10ms", "multiplier": 2, "max_backoff": "20ms"}
MODES = ("ok", "ok", "ok", "refuse", "lost_after", "lost_before")
"""What a forward call does: succeed, be refused (nothing done), or time out after or before
the service did it (the outcome is unknown to the saga)."""


@dataclass
class Ledger:
    """A recording step service: which call arrived, which effect happened, in order."""

    arrived: list[tuple[str, str, str]] = field(default_factory=list)
    effects: list[tuple[str, str]] = field(default_factory=list)
    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        saga_id, step, verb = key.split(":")[:3]
        self.arrived.append((saga_id, step, verb))
        if key in self.answers:
            status, body = self.answers[key]
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        mode = (await request.json())["mode"] if verb in ("action", "try") else "ok"
        if mode == "refuse":
            self.answers[key] = (409, {"error": "refused"})
            return web.json_response({"error": "refused"}, status=409)
        if mode == "lost_before":
            await asyncio.sleep(TIMEOUT * 2)
            return web.json_response({}, status=503)
        self.effects.append((saga_id, f"{step}:{verb}"))
        self.answers[key] = (201, {"id": step})
        if mode == "lost_after":
            await asyncio.sleep(TIMEOUT * 2)
        return web.json_response({"id": step}, status=201)


@dataclass(frozen=True)
class Shape:
    """A random saga: its kind, its stages (member names) and each step's mode."""

    kind: str
    stages: tuple[tuple[str, ...], ...]
    modes: dict[str, str]

    def stage_of(self, step: str) -> int:
        return next(i for i, members in enumerate(self.stages) if step in members)

    def definition(self) -> SagaDefinition:
        items: list[Any] = []
        for index, members in enumerate(self.stages):
            steps = [self._step(name) for name in members]
            items.append(steps[0] if len(steps) == 1 else {"parallel": steps})
            del index
        saga: dict[str, Any] = {
            "name": "prop",
            "trigger": {"method": "POST", "path": "/prop"},
            "steps": items,
        }
        if self.kind == "tcc":
            saga["kind"] = "tcc"
        return SagaDefinition.model_validate(saga)

    def _step(self, name: str) -> dict[str, Any]:
        forward = {
            "service": "ledger",
            "method": "POST",
            "path": f"/fx/{name}",
            "body": {"mode": f"{{{{ input.modes.{name} }}}}"},
        }
        undo = {"service": "ledger", "method": "DELETE", "path": f"/fx/{name}", "retry": FAST}
        step: dict[str, Any] = {"name": name, "retry": ONE_TRY, "timeout": f"{TIMEOUT}s"}
        if self.kind == "tcc":
            confirm = {"service": "ledger", "method": "POST", "path": f"/fx/{name}/c"}
            step.update({"try": forward, "confirm": {**confirm, "retry": FAST}, "cancel": undo})
        else:
            step.update({"action": forward, "compensation": undo})
        return step


@st.composite
def shapes(draw: Callable[..., Any]) -> Shape:
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    stages = tuple(tuple(f"s{i}m{j}" for j in range(size)) for i, size in enumerate(sizes))
    names = [name for members in stages for name in members]
    modes = draw(st.lists(st.sampled_from(MODES), min_size=len(names), max_size=len(names)))
    kind = draw(st.sampled_from(("saga", "tcc")))
    return Shape(kind, stages, dict(zip(names, modes, strict=True)))


@pytest.fixture
async def ledger(services: FakeServices, upstream_server: Callable[..., Any]) -> Ledger:
    """The recording service, configured as service ``ledger``."""
    recorder = Ledger()
    served = await upstream_server(recorder.app())
    services.urls["ledger"] = served.url
    return recorder


@pytest.fixture
async def engine(make_engine: EngineFactory, ledger: Ledger) -> SagaEngine:
    """One engine for every example of the property (with ``ledger`` configured)."""
    return (await make_engine()).runtime.engine


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shape=shapes())
async def test_every_effect_that_may_have_happened_is_undone_once_in_reverse_stage_order(
    engine: SagaEngine, ledger: Ledger, shape: Shape
) -> None:
    definition = shape.definition()
    created = await engine.start(definition, {"modes": shape.modes}, {}, None)
    assert created.lease is not None
    final = await engine.execute(definition, created.lease, {}, input_data={"modes": shape.modes})
    saga_id = final.id
    arrived = [(step, verb) for saga, step, verb in ledger.arrived if saga == saga_id]
    forward_verb, undo_verb = (
        ("try", "cancel") if shape.kind == "tcc" else ("action", "compensation")
    )

    failing = next(
        (
            i
            for i, members in enumerate(shape.stages)
            if any(shape.modes[m] != "ok" for m in members)
        ),
        None,
    )
    reached = shape.stages if failing is None else shape.stages[: failing + 1]
    called = [name for members in reached for name in members]
    forward = Counter(step for step, verb in arrived if verb == forward_verb)
    assert forward == Counter(called), "every member of a reached stage is called once"
    undone = [step for step, verb in arrived if verb == undo_verb]
    confirmed = [step for step, verb in arrived if verb == "confirm"]
    done = {
        effect.split(":")[0]
        for saga, effect in ledger.effects
        if saga == saga_id and effect.endswith(f":{forward_verb}")
    }

    if failing is None:
        assert final.status is SagaStatus.COMPLETED
        assert undone == []
        expected_confirms = sorted(called) if shape.kind == "tcc" else []
        assert sorted(confirmed) == expected_confirms
        return
    assert final.status is SagaStatus.COMPENSATED
    assert confirmed == [], "never a confirm once a try failed"
    may_have = [s for s in called if shape.kind == "tcc" or shape.modes[s] != "refuse"]
    assert sorted(undone) == sorted(may_have), "each may-have-happened effect undone once"
    assert done <= set(undone)
    order = [shape.stage_of(step) for step in undone]
    assert order == sorted(order, reverse=True), f"stages undone out of order: {undone}"
