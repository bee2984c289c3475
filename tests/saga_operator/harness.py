"""Helpers of the operator suite: a sidecar config with a real saga, seeding, polling, the CLI.

``write_config`` writes a sidecar config (and the ``order`` saga and the two shapes of
``saga_operator.shapes`` under ``sagas/``) that both the
in-process sidecar and ``saga-sidecar sagas ...`` subprocesses read, so they share one store.
``Seeder`` creates sagas directly through the store API in any status, one second apart.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from saga_store.helpers import FakeClock, saga_change

from saga_operator.shapes import SHAPE_SAGAS
from saga_runner.definition import load_definition
from saga_runner.records import NewStep, SagaInstance
from saga_runner.redact import Redactor
from saga_runner.seal import SEALED, Sealer
from saga_runner.states import SagaStatus
from saga_runner.store import SagaStore

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "operator-test-token"
SEED_DEFINITION = "seed-definition-v1"
TERMINAL = frozenset({"completed", "compensated", "failed"})

ORDER_SAGA: dict[str, Any] = {
    "name": "order",
    "trigger": {"method": "POST", "path": "/api/orders"},
    "mode": "async",
    "business_id": "{{ input.order_no }}",
    "steps": [
        {
            "name": "create_order",
            "action": {
                "service": "shop",
                "method": "POST",
                "path": "/orders",
                "body": {"order_no": "{{ input.order_no }}"},
                "success": [201],
            },
            "compensation": {
                "service": "shop",
                "method": "DELETE",
                "path": "/orders/{{ steps.create_order.body.id }}",
                "retry": {"attempts": 2, "backoff": "10ms", "max_backoff": "10ms"},
            },
            "retry": {"attempts": 1},
            "timeout": "5s",
        },
        {
            "name": "charge",
            "action": {
                "service": "shop",
                "method": "POST",
                "path": "/payments",
                "body": {
                    "order_id": "{{ steps.create_order.body.id }}",
                    "card_number": "{{ input.card_number }}",
                },
                "success": [201],
            },
            "compensation": {
                "service": "shop",
                "method": "POST",
                "path": "/payments/by-saga/{{ saga.id }}/refund",
                "retry": {"attempts": 2, "backoff": "10ms", "max_backoff": "10ms"},
            },
            "retry": {"attempts": 1},
            "timeout": "30s",
        },
    ],
}

# The sidecar's ``sagas.encryption_keys``: a stuck saga's redacted card number is sealed with it.
SEAL_KEY = "c2FnYS1zaWRlY2FyIHRlc3Qgc2VhbCBrZXkgMzIgYnk="


def write_config(directory: Path, store_url: str, shop_url: str, token: str = "") -> Path:
    """Write ``sidecar.yaml`` and ``sagas/`` (``order``, ``checkout``, ``transfer``) into
    ``directory``; return the config."""
    (directory / "sagas").mkdir(parents=True, exist_ok=True)
    for saga in (ORDER_SAGA, *SHAPE_SAGAS):
        (directory / "sagas" / f"{saga['name']}.yaml").write_text(yaml.safe_dump(saga), "utf-8")
    config = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0", "token": token},
        "upstream": {"url": shop_url},
        "services": {"shop": shop_url},
        "sagas": {
            "store": store_url,
            "definitions": ["sagas/*.yaml"],
            "lease": "5s",
            "recovery_interval": "1h",
            "encryption_keys": [SEAL_KEY],
        },
        "log": {"format": "text", "level": "warning"},
    }
    path = directory / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    return path


@dataclass
class Seeder:
    """Creates sagas through the store API, each one second after the previous one.

    ``store`` must be opened with ``clock``; the clock starts an hour ago.
    """

    store: SagaStore
    clock: FakeClock

    async def saga(
        self,
        status: SagaStatus,
        *,
        name: str = "payment",
        business_id: str | None = None,
        input_data: Any = None,
    ) -> SagaInstance:
        """A saga in ``status``; running/compensating ones stay leased (for ten days)."""
        self.clock.advance(1)
        await self.store.save_definition(SEED_DEFINITION, name, {"name": name, "steps": []})
        created = await self.store.create_instance(
            business_type=name,
            business_id=business_id,
            definition_hash=SEED_DEFINITION,
            mode="async",
            input_data=input_data if input_data is not None else {"order_no": business_id},
            steps=[NewStep("reserve", 3), NewStep("charge", 3)],
            owner="replica-seed",
            lease_seconds=10 * 86400,
        )
        assert created.lease is not None
        lease, saga = created.lease, created.saga
        path = {
            SagaStatus.RUNNING: [],
            SagaStatus.COMPLETED: [SagaStatus.COMPLETED],
            SagaStatus.FAILED: [SagaStatus.FAILED],
            SagaStatus.COMPENSATING: [SagaStatus.COMPENSATING],
            SagaStatus.COMPENSATED: [SagaStatus.COMPENSATING, SagaStatus.COMPENSATED],
        }[status]
        for step in path:
            reason = None if step is SagaStatus.COMPLETED else f"seeded {step.value}"
            saga = await self.store.write(lease, saga_change(step, failure_reason=reason))
        if status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            await self.store.release(lease)
        return saga


def auth(token: str | None = TOKEN) -> dict[str, str]:
    """The admin Authorization header."""
    return {"Authorization": f"Bearer {token}"} if token else {}


async def get_json(
    client: aiohttp.ClientSession, url: str, token: str | None = None
) -> tuple[int, Any]:
    """GET ``url`` and return the status and the decoded JSON body."""
    async with client.get(url, headers=auth(token)) as response:
        return response.status, await response.json(content_type=None)


async def wait_for_status(
    client: aiohttp.ClientSession,
    admin_url: str,
    saga_id: str,
    statuses: frozenset[str] | set[str],
    token: str | None = None,
    *,
    event: str | None = None,
    within: float = 15.0,
) -> dict[str, Any]:
    """Poll ``GET /sagas/{id}`` until the saga's status is one of ``statuses``.

    With ``event``, also until an event with that action is recorded (an operator run records
    ``<action>_finished`` just after the saga reaches its end).
    """
    deadline = time.monotonic() + within
    body: Any = None
    while time.monotonic() < deadline:
        status, body = await get_json(client, f"{admin_url}/sagas/{saga_id}", token)
        assert status == 200, body
        recorded = event is None or any(e["action"] == event for e in body["events"])
        if body["status"] in statuses and recorded:
            return dict(body)
        await asyncio.sleep(0.05)
    raise AssertionError(f"saga {saga_id} never reached {sorted(statuses)} ({event}): {body}")


@dataclass(frozen=True)
class CliResult:
    """What a ``saga-sidecar`` subprocess printed and returned."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout as JSON."""
        return json.loads(self.stdout)


async def run_cli(*args: str, env: Mapping[str, str] | None = None) -> CliResult:
    """Run ``python -m proxy <args>`` without blocking the loop (test upstreams live in it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


def an_hour_ago() -> FakeClock:
    """A clock for seeding, starting an hour before now."""
    return FakeClock(datetime.now(UTC) - timedelta(hours=1))


async def stuck_order(seeder: Seeder, config_dir: Path, order_no: str, lease_seconds: float) -> str:
    """A ``running`` ``order`` saga (the real definition) held by a replica that went away.

    The holder's lease was taken an hour ago for ``lease_seconds``: under 3600 it has expired.
    """
    definition = load_definition(config_dir / "sagas" / "order.yaml", None)
    store = seeder.store
    await store.save_definition(
        definition.definition_hash, definition.name, definition.to_snapshot()
    )
    seeder.clock.advance(1)
    saga_id = str(uuid.uuid4())
    real = {"order_no": order_no, "card_number": "4111111111111111"}
    redactor = Redactor(fields=["card_number"])
    sealed = Sealer.from_base64([SEAL_KEY]).seal(redactor, saga_id, real, {})
    created = await store.create_instance(
        business_type=definition.name,
        business_id=order_no,
        definition_hash=definition.definition_hash,
        mode="async",
        input_data={"order_no": order_no, "card_number": "[REDACTED]"},
        steps=[NewStep(step.name, step.retry.attempts) for step in definition.steps],
        owner="replica-gone",
        lease_seconds=lease_seconds,
        saga_id=saga_id,
    )
    started: dict[str, Any] = {"headers": {}, SEALED: sealed}
    await store.record_event(created.saga.id, "replica-gone", "started", started)
    return created.saga.id
