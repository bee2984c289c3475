"""A sidecar killed with ``kill -9`` mid-call: the next process re-sends the real card number.

The stored input is redacted; with ``sagas.encryption_keys`` the card number is sealed beside it,
so the process that resumes the saga (with the same keys, or rotated ones that still list the old
key) sends the value the client sent, never ``[REDACTED]``.
"""

from __future__ import annotations

import base64
import os

import aiohttp
import pytest

from durability.conftest import Db, SagaCluster, eventually, kill, saga, step
from durability.ledger import Ledger

CARD = "4111111111111111"


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.mark.parametrize("rotated", [False, True], ids=["same-key", "rotated-key"])
async def test_a_saga_killed_mid_call_is_resumed_with_the_real_card_number(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession, rotated: bool
) -> None:
    charge = step("charge", "/charge")
    charge["action"]["body"] = {"card_number": "{{ input.card_number }}"}
    ledger.script("/charge", delay=2.0)
    cluster.write_saga(saga("order", [charge]))
    old = key()
    first = cluster.start(sagas={"encryption_keys": [old]})
    saga_id = await cluster.trigger(http, first, "order", {"order": "S-1", "card_number": CARD})
    await eventually(lambda: ledger.calls_to("/charge", saga_id), "charge reached the app")
    kill(first)

    keys = [key(), old] if rotated else [old]
    cluster.start(sagas={"encryption_keys": keys})
    row = await pg.wait_status(saga_id)

    assert row["status"] == "completed"
    calls = ledger.calls_to("/charge", saga_id)
    assert len(calls) == 2
    assert [c.body for c in calls] == [{"card_number": CARD}] * 2
    assert CARD not in str(row["input"])
