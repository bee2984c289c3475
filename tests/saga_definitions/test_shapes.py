"""Saga shapes in saga files: parallel groups and TCC steps, and every malformed shape reported
as ``FILE:LINE: key.path: message``."""

from __future__ import annotations

from pathlib import Path

from saga_runner.definition import ParallelGroup, SagaDefinition, Stage
from saga_runner.states import AttemptKind

from .helpers import VALID, errors, load

GROUPED = """\
name: checkout
trigger: {method: POST, path: /checkout}
steps:
  - name: order
    action: {service: orders, method: POST, path: /orders}
  - parallel:
      - name: stock
        action: {service: orders, method: POST, path: "/stock/{{ steps.order.body.id }}"}
        compensation: {service: orders, method: DELETE, path: "/stock/{{ steps.stock.body.id }}"}
      - name: charge
        action: {service: payments, method: POST, path: /charges}
  - name: notify
    action: {service: orders, method: POST, path: "/n/{{ steps.charge.body.id }}"}
"""

TRANSFER = """\
name: transfer
kind: tcc
trigger: {method: POST, path: /transfer}
steps:
  - name: debit
    try: {service: payments, method: POST, path: /holds}
    confirm: {service: payments, method: POST, path: "/holds/{{ saga.id }}/confirm"}
    cancel: {service: payments, method: DELETE, path: "/holds/{{ saga.id }}"}
  - name: credit
    try: {service: orders, method: POST, path: /credits}
    confirm: {service: orders, method: POST, path: "/credits/{{ steps.debit.body.id }}"}
    cancel: {service: orders, method: DELETE, path: "/credits/{{ saga.id }}"}
"""


def test_a_parallel_group_is_one_stage_of_steps_numbered_in_file_order(tmp_path: Path) -> None:
    definition = load(tmp_path, GROUPED)

    assert isinstance(definition.steps[1], ParallelGroup)
    assert [s.name for s in definition.all_steps] == ["order", "stock", "charge", "notify"]
    assert definition.stages == (
        Stage(0, (0,)),
        Stage(1, (1, 2), parallel=True),
        Stage(2, (3,)),
    )
    assert definition.step("charge").action is not None
    assert definition.forward_kind is AttemptKind.ACTION
    restored = SagaDefinition.from_snapshot(definition.to_snapshot())
    assert restored.definition_hash == definition.definition_hash
    assert restored.stages == definition.stages


def test_a_tcc_step_has_try_confirm_and_cancel_with_their_defaults(tmp_path: Path) -> None:
    definition = load(tmp_path, TRANSFER)

    debit = definition.step("debit")
    assert definition.kind == "tcc" and definition.undo_kind is AttemptKind.CANCEL
    assert debit.try_ is not None and debit.confirm is not None and debit.cancel is not None
    assert debit.confirm.success_statuses == frozenset(range(200, 300))
    assert debit.cancel.success_statuses == frozenset((*range(200, 300), 404, 410))
    assert debit.confirm.retry.attempts == 10 and debit.cancel.retry.attempts == 10
    assert debit.retry.attempts == 3, "the try is retried like an action"
    snapshot = definition.to_snapshot()
    assert "try" in snapshot["steps"][0] and "action" not in snapshot["steps"][0]
    assert SagaDefinition.from_snapshot(snapshot).definition_hash == definition.definition_hash


def test_a_plain_saga_snapshot_has_no_shape_keys(tmp_path: Path) -> None:
    snapshot = load(tmp_path, VALID).to_snapshot()

    assert "kind" not in snapshot
    assert all(set(step).isdisjoint({"try", "confirm", "cancel"}) for step in snapshot["steps"])
    assert all("action" in step and "compensation" in step for step in snapshot["steps"])


def test_a_member_cannot_use_a_sibling_or_a_later_step(tmp_path: Path) -> None:
    text = GROUPED.replace("path: /charges}", 'path: "/c/{{ steps.stock.body.id }}"}').replace(
        'path: "/stock/{{ steps.order.body.id }}"', 'path: "/s/{{ steps.notify.body.id }}"'
    )
    assert errors(tmp_path, text) == [
        "saga.yaml:8: steps[1].parallel[0].action.path: template '{{ steps.notify.body.id }}' "
        "refers to step 'notify', which runs later",
        "saga.yaml:11: steps[1].parallel[1].action.path: template '{{ steps.stock.body.id }}' "
        "refers to step 'stock' of its own parallel group, which runs alongside",
    ]


def test_groups_of_fewer_than_two_steps_and_nested_groups_are_rejected(tmp_path: Path) -> None:
    text = GROUPED.replace(
        "  - name: notify\n",
        "  - parallel: []\n"
        "  - parallel:\n"
        "      - name: alone\n"
        "        action: {service: orders, method: POST, path: /a}\n"
        "  - parallel:\n"
        "      - name: x\n"
        "        action: {service: orders, method: POST, path: /x}\n"
        "      - parallel:\n"
        "          - {name: y, action: {service: orders, method: POST, path: /y}}\n"
        "          - {name: z, action: {service: orders, method: POST, path: /z}}\n"
        "  - name: notify\n",
    )
    found = errors(tmp_path, text)

    assert found[:2] == [
        "saga.yaml:12: steps[2].parallel: a parallel group needs at least two steps (write a "
        "single step as a plain item)",
        "saga.yaml:13: steps[3].parallel: a parallel group needs at least two steps (write a "
        "single step as a plain item)",
    ]
    assert found[2:] == [
        "saga.yaml:19: steps[4].parallel[1].parallel: parallel groups cannot be nested"
    ]


def test_step_names_are_unique_across_groups(tmp_path: Path) -> None:
    text = GROUPED.replace("name: charge", "name: order")
    assert errors(tmp_path, text) == [
        "saga.yaml:10: steps[1].parallel[1].name: duplicate step name 'order' (steps[0])",
        "saga.yaml:13: steps[2].action.path: template '{{ steps.charge.body.id }}' refers to "
        "unknown step 'charge'",
    ]


def test_tcc_steps_need_try_confirm_and_cancel_and_no_action(tmp_path: Path) -> None:
    text = TRANSFER.replace("    try: {service: payments", "    action: {service: payments", 1)
    text = text.replace(
        '    cancel: {service: orders, method: DELETE, path: "/credits/{{ saga.id }}"}\n',
        "    compensation: {service: orders, method: DELETE, path: /c}\n",
    )
    assert errors(tmp_path, text) == [
        "saga.yaml:5: steps[0].try: required key is missing",
        "saga.yaml:6: steps[0].action: a TCC step has try, confirm and cancel, not action",
        "saga.yaml:9: steps[1].cancel: required key is missing",
        "saga.yaml:12: steps[1].compensation: a TCC step has try, confirm and cancel, "
        "not compensation",
    ]


def test_a_saga_step_needs_an_action_and_no_tcc_calls(tmp_path: Path) -> None:
    text = TRANSFER.replace("kind: tcc\n", "")
    found = errors(tmp_path, text)
    assert found[:2] == [
        "saga.yaml:4: steps[0].action: required key is missing",
        "saga.yaml:5: steps[0].try: try belongs to a TCC step (kind: tcc at the saga's top level)",
    ]


def test_a_tcc_cancel_may_use_its_own_try_but_a_try_may_not(tmp_path: Path) -> None:
    text = TRANSFER.replace("path: /holds}", 'path: "/h/{{ steps.debit.body.id }}"}')
    assert errors(tmp_path, text) == [
        "saga.yaml:6: steps[0].try.path: template '{{ steps.debit.body.id }}' refers to its "
        "own step; only the step's confirm and cancel can use its result",
    ]
