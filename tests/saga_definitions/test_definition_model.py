"""Saga definitions: the bundled payment saga, defaults, rendering, hash pinning, snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga_runner.definition import SagaDefinition, load_definition
from saga_runner.errors import TemplateError
from saga_runner.retry import ACTION_RETRY, COMPENSATION_RETRY, RetryPolicy
from saga_runner.template import RenderContext, StepResult
from yamlconfig.errors import ConfigError
from yamlconfig.loader import load_yaml

from .helpers import SERVICES, VALID, load

REPO = Path(__file__).resolve().parents[2]
PAYMENT = REPO / "config" / "sagas" / "payment.yaml"


@pytest.fixture
def payment() -> SagaDefinition:
    services = load_yaml(REPO / "config" / "sidecar.yaml", env={}).data["services"]
    return load_definition(PAYMENT, services, env={})


def test_bundled_payment_saga_loads_against_the_bundled_config(payment: SagaDefinition) -> None:
    assert payment.name == "payment"
    assert (payment.trigger.method, payment.trigger.path) == ("POST", "/api/v1/payments")
    assert payment.mode == "sync"
    assert [s.name for s in payment.steps] == ["create_order", "charge"]
    assert [s.action.service for s in payment.steps] == ["orders", "payments"]
    assert payment.steps[0].retry == RetryPolicy(backoff=0.1, max_backoff=5.0)
    assert payment.steps[0].timeout == 5.0
    assert payment.response.status == 201


def test_payment_saga_renders_its_calls_and_response(payment: SagaDefinition) -> None:
    order = {"id": "ord_1", "order_no": "A-1", "amount": 42.5, "status": "created"}
    charge = {"id": "pay_2", "order_id": "ord_1", "amount": 42.5, "status": "captured"}
    ctx = RenderContext(
        input={"order_no": "A-1", "amount": 42.5},
        saga_id="s-1",
        steps={"create_order": StepResult(201, order), "charge": StepResult(201, charge)},
    )
    create, charge_step = payment.steps
    assert payment.render_business_id(ctx) == "A-1"
    call = create.action.render(ctx)
    assert (call.method, call.path, call.body) == (
        "POST",
        "/orders",
        {"order_no": "A-1", "amount": 42.5},
    )
    assert call.headers == {"X-Request-Source": "sidecar"}
    assert str(call.url(SERVICES["orders"])) == "http://127.0.0.1:3001/orders"
    assert create.compensation is not None
    undo = create.compensation.render(ctx)
    assert (undo.method, undo.path, undo.has_body) == ("DELETE", "/orders/ord_1", False)
    assert charge_step.action.render(ctx).body == {"order_id": "ord_1", "amount": 42.5}
    assert charge_step.compensation is not None
    assert charge_step.compensation.render(ctx).path == "/payments/pay_2/refund"
    response = payment.response.render(ctx)
    assert (response.status, response.body) == (201, {"order": order, "payment": charge})


def test_compensation_without_the_step_result_is_a_template_error(payment: SagaDefinition) -> None:
    compensation = payment.steps[0].compensation
    assert compensation is not None
    with pytest.raises(TemplateError, match="step 'create_order' has no result"):
        compensation.render(RenderContext(input={}))


def test_defaults_of_retry_timeout_success_and_mode(tmp_path: Path) -> None:
    definition = load(tmp_path, VALID)
    first, second = definition.steps
    assert definition.mode == "sync"
    assert first.retry == ACTION_RETRY
    assert first.compensation is not None
    assert first.compensation.retry == COMPENSATION_RETRY
    assert first.timeout is None
    assert first.timeout_or(30.0) == 30.0
    assert [s in first.action.success_statuses for s in (200, 204, 299, 300, 404, 410)] == [
        True, True, True, False, False, False,
    ]  # fmt: skip
    assert [s in first.compensation.success_statuses for s in (200, 299, 404, 410, 409, 500)] == [
        True, True, True, True, False, False,
    ]  # fmt: skip
    assert second.compensation is None


def test_partial_retry_keeps_the_role_defaults_for_missing_keys(tmp_path: Path) -> None:
    text = VALID.replace(
        '      path: "/orders/{{ steps.first.body.id }}"\n',
        '      path: "/orders/{{ steps.first.body.id }}"\n      retry: {attempts: 4}\n'
        "    retry: {max_backoff: 1m}\n",
    )
    first = load(tmp_path, text).steps[0]
    assert first.retry == ACTION_RETRY.model_copy(update={"max_backoff": 60.0})
    assert first.compensation is not None
    assert first.compensation.retry == COMPENSATION_RETRY.model_copy(update={"attempts": 4})


def test_explicit_success_list_replaces_the_default(tmp_path: Path) -> None:
    text = VALID.replace("      path: /payments\n", "      path: /payments\n      success: [202]\n")
    action = load(tmp_path, text).steps[1].action
    assert action.success_statuses == {202}


def test_hash_is_stable_across_key_order_and_spelled_out_defaults(tmp_path: Path) -> None:
    reordered = """\
response:
  body: {second: "{{ steps.second.body }}", first: "{{ steps.first.body }}"}
  status: 201
steps:
  - action:
      body: {order_no: "{{ input.order_no }}"}
      path: /orders
      method: post
      service: orders
    name: first
    retry: {backoff: 200ms}
    compensation: {path: "/orders/{{ steps.first.body.id }}", method: DELETE, service: orders}
  - name: second
    action: {body: {order: "{{ steps.first.body.id }}"}, method: POST, path: /payments,
             service: payments}
mode: sync
business_id: "{{ input.order_no }}"
trigger: {path: /api/demo, method: POST}
name: demo
"""
    original = load(tmp_path / "a", VALID)
    same = load(tmp_path / "b", reordered)
    assert len(original.definition_hash) == 64
    assert same.definition_hash == original.definition_hash
    assert same == original
    assert hash(same) == hash(original)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("status: 201", "status: 200"),
        ("path: /payments", "path: /payments/v2"),
        ('{order: "{{ steps.first.body.id }}"}', '{order: "{{ steps.first.body.id }}", n: 1}'),
        ("name: demo", "name: demo2"),
        ("trigger: {method: POST, path: /api/demo}", "trigger: {method: PUT, path: /api/demo}"),
    ],
)
def test_hash_changes_when_the_definition_changes(tmp_path: Path, old: str, new: str) -> None:
    assert old in VALID
    changed = load(tmp_path / "b", VALID.replace(old, new, 1))
    assert changed.definition_hash != load(tmp_path / "a", VALID).definition_hash


def test_hash_changes_with_a_retry_setting(tmp_path: Path) -> None:
    text = VALID.replace("  - name: second\n", "    retry: {attempts: 5}\n  - name: second\n")
    assert load(tmp_path / "b", text).definition_hash != load(tmp_path / "a", VALID).definition_hash


def test_snapshot_round_trips_through_json(payment: SagaDefinition) -> None:
    snapshot = payment.to_snapshot()
    stored = json.loads(json.dumps(snapshot))
    restored = SagaDefinition.from_snapshot(stored)
    assert restored == payment
    assert restored.definition_hash == payment.definition_hash
    assert restored.to_snapshot() == snapshot
    ctx = RenderContext(input={"order_no": "A-1", "amount": 1}, saga_id="s")
    assert restored.steps[0].action.render(ctx) == payment.steps[0].action.render(ctx)


def test_snapshot_spells_out_the_defaults(tmp_path: Path) -> None:
    snapshot = load(tmp_path, VALID).to_snapshot()
    assert snapshot["steps"][1]["retry"] == ACTION_RETRY.model_dump()
    assert snapshot["steps"][0]["compensation"]["retry"] == COMPENSATION_RETRY.model_dump()
    assert snapshot["mode"] == "sync"


def test_snapshot_does_not_need_the_service_to_still_be_configured(tmp_path: Path) -> None:
    snapshot = load(tmp_path, VALID).to_snapshot()
    assert SagaDefinition.from_snapshot(snapshot).steps[1].action.service == "payments"


def test_invalid_snapshot_raises_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        SagaDefinition.from_snapshot({"name": "x", "trigger": {"method": "POST", "path": "/x"}})
    assert [str(i) for i in caught.value.issues] == ["<snapshot>:1: steps: required key is missing"]


def test_definitions_are_immutable(payment: SagaDefinition) -> None:
    with pytest.raises(ValueError, match="frozen"):
        payment.name = "other"  # type: ignore[misc]


def test_step_lookup_by_name(payment: SagaDefinition) -> None:
    assert payment.step("charge").action.service == "payments"
    with pytest.raises(KeyError):
        payment.step("missing")
