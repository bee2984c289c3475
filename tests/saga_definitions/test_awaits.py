"""``await`` on a step and ``deadline`` on a saga in saga files, and every mistake reported as
``FILE:LINE: key.path: message``; ``check`` on a config naming such a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from saga_runner.definition import SagaDefinition

from .helpers import VALID, errors, load

PAYMENT = """\
name: payment
trigger: {method: POST, path: /pay}
mode: async
deadline: 30m
steps:
  - name: charge
    action: {service: payments, method: POST, path: /payments}
    compensation:
      service: payments
      method: POST
      path: "/payments/{{ steps.charge.body.id }}/refund"
    await:
      callback: {timeout: 15m}
  - name: order
    action: {service: orders, method: POST, path: "/orders/{{ steps.charge.body.capture }}"}
"""


def test_an_awaiting_step_and_a_deadline_are_read_and_pinned(tmp_path: Path) -> None:
    definition = load(tmp_path, PAYMENT)

    charge = definition.step("charge")
    assert charge.awaits and charge.await_ is not None
    assert charge.await_.kind == "callback" and charge.await_.timeout == 900.0
    assert definition.deadline == 1800.0
    assert not definition.step("order").awaits
    restored = SagaDefinition.from_snapshot(definition.to_snapshot())
    assert restored.definition_hash == definition.definition_hash
    assert restored.step("charge").await_ == charge.await_


def test_a_saga_without_awaits_keeps_its_snapshot_and_hash(tmp_path: Path) -> None:
    snapshot = load(tmp_path, VALID).to_snapshot()

    assert "deadline" not in snapshot
    assert all("await" not in step for step in snapshot["steps"])


def test_every_await_mistake_is_reported_at_its_line(tmp_path: Path) -> None:
    text = """\
name: payment
trigger: {method: POST, path: /pay}
deadline: 0s
steps:
  - name: charge
    action: {service: payments, method: POST, path: /payments}
    await:
      callback: {}
  - name: settle
    action: {service: payments, method: POST, path: /settlements}
    await:
      callback: {timeout: 1m}
      poll: {path: /x, every: 2s, timeout: 1m}
  - name: ship
    action: {service: orders, method: POST, path: /ship}
    await: {message: {}}
  - name: nothing
    action: {service: orders, method: POST, path: /nothing}
    await: {}
  - parallel:
      - name: a
        action: {service: orders, method: POST, path: /a}
        await: {callback: {timeout: 1m}}
      - name: b
        action: {service: orders, method: POST, path: /b}
"""
    found = errors(tmp_path, text)

    assert "saga.yaml:3: deadline: must be greater than 0" in found
    assert (
        "saga.yaml:8: steps[0].await.callback.timeout: required: how long to wait for the outcome"
        in found
    )
    assert (
        "saga.yaml:7: steps[0].await: a step that awaits its outcome needs the saga's mode: async"
        in found
    )
    assert "saga.yaml:11: steps[1].await: needs exactly one of callback, poll or message" in found
    assert (
        "saga.yaml:13: steps[1].await.poll.success: required: the answer that means success"
        in found
    )
    assert (
        "saga.yaml:16: steps[2].await.message.timeout: required: how long to wait for the outcome"
        in found
    )
    assert "saga.yaml:19: steps[3].await: needs exactly one of callback, poll or message" in found
    assert (
        "saga.yaml:23: steps[4].parallel[0].await: "
        "a member of a parallel group cannot await its outcome" in found
    )


def test_a_tcc_step_cannot_await(tmp_path: Path) -> None:
    text = """\
name: transfer
kind: tcc
mode: async
trigger: {method: POST, path: /transfer}
steps:
  - name: debit
    try: {service: payments, method: POST, path: /holds}
    confirm: {service: payments, method: POST, path: "/holds/{{ saga.id }}/confirm"}
    cancel: {service: payments, method: DELETE, path: "/holds/{{ saga.id }}"}
    await: {callback: {timeout: 1m}}
"""
    assert errors(tmp_path, text) == [
        "saga.yaml:10: steps[0].await: a TCC step cannot await its outcome"
    ]


def test_check_reports_await_mistakes_and_the_reserved_callbacks_path(tmp_path: Path) -> None:
    (tmp_path / "sagas").mkdir()
    sagas = tmp_path / "sagas"
    (sagas / "pay.yaml").write_text(PAYMENT.replace("mode: async\n", ""), encoding="utf-8")
    taken = PAYMENT.replace("/pay}", "/_saga/callbacks/x}").replace("name: payment", "name: p2")
    (sagas / "taken.yaml").write_text(taken, encoding="utf-8")
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "upstream: {url: 'http://127.0.0.1:3000'}\n"
        "services: {orders: 'http://127.0.0.1:3001', payments: 'http://127.0.0.1:3002'}\n"
        "sagas:\n"
        "  store: sqlite:///sagas.db\n"
        "  definitions: [sagas/*.yaml]\n"
        "  callbacks: {url: 'http://shop.default.svc:8080'}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert (
        "pay.yaml:11: steps[0].await: a step that awaits its outcome needs the saga's mode: async"
        in result.stderr
    )
    assert "/_saga/callbacks/x" in result.stderr


SETTLE = """\
name: settle
trigger: {method: POST, path: /settle}
mode: async
steps:
  - name: settle
    action: {service: payments, method: POST, path: /settlements}
    compensation: {service: payments, method: DELETE, path: "/settlements/{{ saga.id }}"}
    await:
      poll:
        path: "/settlements/{{ steps.settle.body.id }}"
        headers: {X-Ref: "{{ steps.settle.body.id }}"}
        every: 2s
        timeout: 10m
        success: {field: body.state, in: [settled]}
        failure: {field: body.state, in: [rejected, cancelled]}
"""


def test_a_polled_step_may_use_its_own_answer_and_matches_fields(tmp_path: Path) -> None:
    definition = load(tmp_path, SETTLE)

    awaited = definition.step("settle").await_
    assert awaited is not None and awaited.poll is not None
    assert awaited.kind == "poll" and awaited.timeout == 600.0
    poll = awaited.poll
    assert (poll.method, poll.every, poll.service) == ("GET", 2.0, None)
    assert poll.success is not None and poll.failure is not None
    assert poll.success.matches(200, {}, {"state": "settled"})
    assert not poll.success.matches(200, {}, {"state": "pending"})
    assert not poll.success.matches(200, {}, "settled")
    assert poll.failure.matches(200, {}, {"state": "cancelled"})
    restored = SagaDefinition.from_snapshot(definition.to_snapshot())
    assert restored.definition_hash == definition.definition_hash


def test_poll_mistakes_are_reported_at_their_lines(tmp_path: Path) -> None:
    text = SETTLE.replace(
        'steps.settle.body.id }}"\n        headers', 'steps.later.body.id }}"\n        headers'
    )
    text = text.replace("timeout: 10m", "service: nowhere").replace(
        "field: body.state, in: [settled]", "field: state, in: []"
    )
    text += """\
  - name: later
    action: {service: orders, method: POST, path: /later}
"""
    found = errors(tmp_path, text)

    assert found == [
        "saga.yaml:9: steps[0].await.poll.timeout: required: how long to wait for the outcome",
        "saga.yaml:10: steps[0].await.poll.path: template '{{ steps.later.body.id }}' refers to "
        "step 'later', which runs later",
        "saga.yaml:13: steps[0].await.poll.service: unknown service 'nowhere' "
        "(services: orders, payments)",
        "saga.yaml:14: steps[0].await.poll.success.field: must start with status, body or "
        "headers, got 'state'",
        "saga.yaml:14: steps[0].await.poll.success.in: must list at least one value",
    ]
