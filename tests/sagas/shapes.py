"""Saga files of the shape tests: a step, a parallel group of three, a last step; and TCC.

Every call of these sagas goes to ``FakeServices`` with the step's name in its path, so a test
reads the journal as "which step got which call, when". Members of the group are spread over
the three services (``inventory``, ``payments``, ``shipping``); ``first`` and ``last`` call
``inventory``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from saga_runner.records import SagaInstance
from sagas.harness import EngineHarness

MEMBERS = ("m0", "m1", "m2")
MEMBER_SERVICE = {"m0": "inventory", "m1": "payments", "m2": "shipping"}
ONE_TRY = {"attempts": 1, "backoff": "10ms", "multiplier": 2, "max_backoff": "20ms"}
FAST_UNDO = {"attempts": 3, "backoff": "10ms", "multiplier": 2, "max_backoff": "20ms"}


def saga_step(name: str, service: str, *, timeout: str = "2s", retry: Any = None) -> dict[str, Any]:
    """A step ``POST /do/<name>`` undone by ``DELETE /do/<name>/<saga id>``."""
    return {
        "name": name,
        "action": {"service": service, "method": "POST", "path": f"/do/{name}"},
        "compensation": {
            "service": service,
            "method": "DELETE",
            "path": f"/do/{name}/{{{{ saga.id }}}}",
            "retry": FAST_UNDO,
        },
        "retry": retry or ONE_TRY,
        "timeout": timeout,
    }


def tcc_step(name: str, service: str, *, timeout: str = "2s", retry: Any = None) -> dict[str, Any]:
    """A TCC step: ``POST /try/<name>``, ``POST /confirm/<name>/<saga>``, ``DELETE /cancel/…``."""
    return {
        "name": name,
        "try": {"service": service, "method": "POST", "path": f"/try/{name}"},
        "confirm": {
            "service": service,
            "method": "POST",
            "path": f"/confirm/{name}/{{{{ saga.id }}}}",
            "retry": FAST_UNDO,
        },
        "cancel": {
            "service": service,
            "method": "DELETE",
            "path": f"/cancel/{name}/{{{{ saga.id }}}}",
            "retry": FAST_UNDO,
        },
        "retry": retry or ONE_TRY,
        "timeout": timeout,
    }


def group_saga(
    *, name: str = "grouped", kind: str = "saga", timeout: str = "2s", **member_retry: Any
) -> dict[str, Any]:
    """``first``, then ``parallel: [m0, m1, m2]``, then ``last`` (sync trigger)."""
    make = tcc_step if kind == "tcc" else saga_step
    saga: dict[str, Any] = {
        "name": name,
        "trigger": {"method": "POST", "path": f"/api/{name}"},
        "steps": [
            make("first", "inventory"),
            {
                "parallel": [
                    make(m, MEMBER_SERVICE[m], timeout=timeout, retry=member_retry.get(m))
                    for m in MEMBERS
                ]
            },
            make("last", "inventory"),
        ],
        "response": {"status": 201, "body": {"m0": "{{ steps.m0.status }}"}},
    }
    if kind == "tcc":
        saga["kind"] = "tcc"
    return saga


async def stop_mid_run(engine: EngineHarness, until: Callable[[str], Awaitable[None]]) -> str:
    """Start the saga on ``engine``, cancel its run once ``until(saga_id)`` returns (a replica
    stopping mid-way: its lease is released), and return the saga's id."""
    created = await engine.runtime.engine.start(engine.definition, {}, {}, None)
    assert created.lease is not None
    task = asyncio.create_task(
        engine.runtime.engine.execute(engine.definition, created.lease, {}, input_data={})
    )
    await until(created.saga.id)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return created.saga.id


async def start_running(engine: EngineHarness) -> tuple[str, asyncio.Task[SagaInstance]]:
    """Start the saga on ``engine`` as a trigger does; return its id and the running run."""
    created = await engine.runtime.engine.start(engine.definition, {}, {}, None, call_headers={})
    assert created.lease is not None
    run = engine.runtime.engine.execute(
        engine.definition, created.lease, {}, input_data={}, started=created
    )
    return created.saga.id, asyncio.create_task(run)
