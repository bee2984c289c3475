"""Fixtures of the hostile-input suite: one real sidecar process per module, on PostgreSQL.

PostgreSQL is the strict backend (``jsonb`` refuses ``NaN``, ``\\u0000`` and unpaired
surrogates), so what passes here passes on SQLite too. The sidecar fronts a ``Recorder`` and
runs two saga files: ``echo`` (``POST /hostile/echo``: the trigger body goes whole to the
recorder's ``/echo``, and the answer is the recorder's) and ``answer`` (``POST /hostile/answer``
with ``{"name": N}``: one call to ``/N`` on the ``RawAnswers`` server, answered with the bytes a
test registered for it).

Fixtures (module scope unless said otherwise):
    recorder        the ``Recorder`` and its URL.
    raw_answers     the ``RawAnswers`` server (``raw_answers.answers[path] = bytes``).
    pg              a ``Target`` on a fresh migrated schema, dropped at the end.
    saga_sidecar    the sidecar process (admin token ``ADMIN_TOKEN``).
    http            a client session (function scope).

``examples(n)`` scales property tests: ``make chaos`` runs them with ``SAGA_SIDECAR_CHAOS=20``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import AppThread, Sidecar, Upstream
from saga_store.helpers import Target, new_schema, run_in_thread

from hostile.services import RawAnswers, Recorder

ADMIN_TOKEN = "hostile-admin-token"
# ``make chaos`` sets SAGA_SIDECAR_CHAOS=N to run N times as many property-test examples.
CHAOS_FACTOR = max(1, int(os.environ.get("SAGA_SIDECAR_CHAOS", "1") or "1"))
TRIGGER_BODY_LIMIT = 64 * 1024
READ_TIMEOUT = 1.0

ECHO_SAGA = {
    "name": "echo",
    "trigger": {"method": "POST", "path": "/hostile/echo"},
    "mode": "sync",
    "steps": [
        {
            "name": "a",
            "action": {"service": "echo", "method": "POST", "path": "/echo", "body": "{{ input }}"},
            "compensation": {"service": "echo", "method": "POST", "path": "/undo"},
            "retry": {"attempts": 1},
        }
    ],
    "response": {"status": 200, "body": "{{ steps.a.body }}"},
}
ANSWER_SAGA = {
    "name": "answer",
    "trigger": {"method": "POST", "path": "/hostile/answer"},
    "mode": "sync",
    "steps": [
        {
            "name": "a",
            "action": {"service": "raw", "method": "GET", "path": "/{{ input.name }}"},
            "retry": {"attempts": 1},
        }
    ],
    "response": {"status": 200, "body": {"status": "{{ steps.a.status }}"}},
}


def examples(count: int) -> int:
    """``count`` property-test examples, times the chaos factor."""
    return count * CHAOS_FACTOR


@pytest.fixture(scope="module")
def recorder(app_in_thread: Callable[..., Upstream]) -> Iterator[tuple[Recorder, str]]:
    """A recording upstream served from the background thread."""
    rec = Recorder()
    upstream = app_in_thread(rec.app())
    yield rec, upstream.url
    upstream.stop()


@pytest.fixture(scope="module")
def raw_answers(background_loop: AppThread) -> Iterator[tuple[RawAnswers, str]]:
    """The raw answering server, served from the background loop."""
    server = RawAnswers({})
    url = background_loop.run(server.start())
    yield server, url
    background_loop.run(server.close())


@pytest.fixture(scope="module")
def pg(database_url: str) -> Iterator[Target]:
    """A migrated PostgreSQL schema for the module, dropped at the end."""
    target = Target.postgres(database_url, new_schema())
    run_in_thread(target.migrate())
    yield target
    run_in_thread(target.drop())


@pytest.fixture(scope="module")
def saga_sidecar(
    module_sidecar_process: Callable[..., Sidecar],
    tmp_path_factory: pytest.TempPathFactory,
    recorder: tuple[Recorder, str],
    raw_answers: tuple[RawAnswers, str],
    pg: Target,
) -> Sidecar:
    """The sidecar with the ``echo`` and ``answer`` sagas on the module's schema."""
    saga_dir = tmp_path_factory.mktemp("hostile-sagas")
    for doc in (ECHO_SAGA, ANSWER_SAGA):
        (saga_dir / f"{doc['name']}.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return module_sidecar_process(
        {
            "upstream": {"url": recorder[1]},
            "limits": {"read_timeout": f"{READ_TIMEOUT:g}s"},
            "admin": {"token": ADMIN_TOKEN},
            "services": {"echo": recorder[1], "raw": raw_answers[1]},
            "idempotency": {"store": "memory://", "max_request_body": TRIGGER_BODY_LIMIT},
            "sagas": {
                "store": pg.url,
                "definitions": [str(Path(saga_dir) / "*.yaml")],
                "recovery_interval": "200ms",
                "lease": "2s",
                "max_input": TRIGGER_BODY_LIMIT,
            },
        }
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that keeps no cookies."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def admin_get(http: aiohttp.ClientSession, sidecar: Sidecar, path: str) -> tuple[int, Any]:
    """GET an admin route with the token; the status and the JSON body (None when not JSON)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.get(f"{sidecar.admin_url}{path}", headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, None
