"""Saga files whose steps publish to a broker (``publish:``) and await a completion message:
what ``check`` accepts, what it refuses (at the offending key's line), and what the engine gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga_runner.definition import SagaDefinition, load_definition
from saga_runner.definition_publish import PublishCompensation, PublishDefinition
from saga_runner.states import AttemptKind
from saga_runner.template import RenderContext, StepResult
from yamlconfig.errors import ConfigError

from .helpers import SERVICES, write

BROKERS = ("jobs", "events")

SHIP = """\
name: shipping
trigger: {method: POST, path: /ship}
mode: async
steps:
  - name: reserve
    action: {service: orders, method: POST, path: /reservations}
  - name: ship
    action:
      publish:
        broker: jobs
        to: "warehouse.{{ input.site }}"
        body: {order: "{{ input.order_no }}", reservation: "{{ steps.reserve.body.id }}"}
        headers: {X-Tenant: "{{ headers.x-tenant }}"}
    compensation:
      publish: {broker: events, to: warehouse.unship, body: {order: "{{ input.order_no }}"}}
    await: {message: {timeout: 1h}}
"""


def load(tmp_path: Path, text: str) -> SagaDefinition:
    return load_definition(write(tmp_path, text), SERVICES, env={}, brokers=BROKERS)


def errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_definition(path, SERVICES, env={}, brokers=BROKERS)
    return [str(issue).replace(str(path), "saga.yaml") for issue in caught.value.issues]


def test_a_publishing_step_renders_its_destination_body_and_headers(tmp_path: Path) -> None:
    ship = load(tmp_path, SHIP).all_steps[1]
    action = ship.call(AttemptKind.ACTION)
    assert isinstance(action, PublishDefinition)
    assert isinstance(ship.compensation, PublishCompensation)
    assert ship.compensation.retry.attempts == 10  # a compensation's retry defaults
    assert ship.awaits_callback and ship.await_ is not None and ship.await_.timeout == 3600
    assert action.referenced_steps() == {"reserve"}
    ctx = RenderContext(
        saga_id="s-1",
        input={"site": "north", "order_no": "A-7"},
        headers={"x-tenant": "acme"},
        steps={"reserve": StepResult(201, {"id": "r-9"}, {})},
    )
    rendered = action.render(ctx)
    assert (rendered.broker, rendered.to) == ("jobs", "warehouse.north")
    assert rendered.body == {"order": "A-7", "reservation": "r-9"}
    assert rendered.headers == {"X-Tenant": "acme"}


def test_a_publishing_saga_survives_its_snapshot(tmp_path: Path) -> None:
    definition = load(tmp_path, SHIP)
    again = SagaDefinition.from_snapshot(definition.to_snapshot())
    assert again.definition_hash == definition.definition_hash
    assert isinstance(again.all_steps[1].action, PublishDefinition)


def test_every_publish_mistake_is_reported_at_its_line(tmp_path: Path) -> None:
    text = """\
name: shipping
trigger: {method: POST, path: /ship}
mode: async
steps:
  - name: ship
    action:
      publish: {broker: kafka, to: warehouse.ship, body: {n: "{{ steps.later.body }}"}}
  - name: settle
    action:
      publish: {broker: jobs, to: ""}
    await:
      poll: {path: /settlements, every: 1s, timeout: 1m, success: {field: status, in: [200]}}
  - name: later
    action: {service: orders, method: POST, path: /later}
"""
    found = errors(tmp_path, text)
    assert (
        "saga.yaml:7: steps[0].action.publish.broker: "
        "unknown broker 'kafka' (brokers: events, jobs)" in found
    )
    assert any(
        line.startswith("saga.yaml:7: steps[0].action.publish.body.n: template") and "later" in line
        for line in found
    ), found
    assert any(line.startswith("saga.yaml:10: steps[1].action.publish.to:") for line in found)
    assert (
        "saga.yaml:12: steps[1].await.poll.service: "
        "required: the action publishes, so the poll names the service it asks" in found
    )


def test_a_call_that_mixes_http_and_publish_keys_is_told_so(tmp_path: Path) -> None:
    text = """\
name: shipping
trigger: {method: POST, path: /ship}
steps:
  - name: ship
    action:
      publish: {broker: jobs, to: warehouse.ship}
      service: orders
"""
    assert errors(tmp_path, text) == [
        "saga.yaml:7: steps[0].action.service: "
        "does not go with the other keys here (it belongs to another form of this value)"
    ]


def test_a_tcc_call_cannot_publish(tmp_path: Path) -> None:
    text = """\
name: transfer
kind: tcc
trigger: {method: POST, path: /transfer}
steps:
  - name: debit
    try: {publish: {broker: jobs, to: debit}}
    confirm: {service: payments, method: POST, path: /confirm}
    cancel: {service: payments, method: POST, path: /cancel}
"""
    found = errors(tmp_path, text)
    assert (
        "saga.yaml:6: steps[0].try: a TCC call is an HTTP call "
        "(only action and compensation may publish)" in found
    )


def test_no_brokers_configured_is_said_plainly(tmp_path: Path) -> None:
    path = write(tmp_path, SHIP)
    with pytest.raises(ConfigError) as caught:
        load_definition(path, SERVICES, env={}, brokers=())
    assert any(
        "unknown broker 'jobs' (brokers: none are configured in sagas.brokers)" in str(issue)
        for issue in caught.value.issues
    )
