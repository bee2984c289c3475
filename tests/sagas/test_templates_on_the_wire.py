"""Templates as the upstream sees them: JSON types kept, text interpolated, paths made safe.

A one-step saga renders its call from the trigger input; the real upstream records the raw
request line and the JSON body it received.
"""

from __future__ import annotations

from typing import Any

import pytest

from saga_runner.states import SagaStatus
from sagas.conftest import EngineFactory
from sagas.services import FakeServices, Reply


def one_step(action: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A saga with a single ``lookup`` step on the inventory service."""
    return {
        "name": "lookup",
        "trigger": {"method": "POST", "path": "/api/lookup"},
        "steps": [
            {
                "name": "lookup",
                "action": {"service": "inventory", "method": "POST", **action},
                "retry": {"attempts": 1},
            }
        ],
        **extra,
    }


async def test_a_whole_string_template_keeps_the_json_type_and_text_is_interpolated(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    saga = one_step(
        {
            "path": "/items",
            "headers": {"X-Order": "order-{{ input.order_no }}/{{ input.qty }}"},
            "body": {
                "amount": "{{ input.amount }}",
                "qty": "{{ input.qty }}",
                "gift": "{{ input.gift }}",
                "nothing": "{{ input.nothing }}",
                "items": "{{ input.items }}",
                "address": "{{ input.address }}",
                "first_sku": "{{ input.items.0.sku }}",
                "note": "order {{ input.order_no }}: {{ input.qty }} x {{ input.amount }}",
                "flags": "gift={{ input.gift }} address={{ input.address }}",
                "literal": 7,
                "list": ["{{ input.qty }}", "n{{ input.qty }}", False],
                "saga": "{{ saga.id }}",
                "spaced": " {{ input.qty }}",
            },
        }
    )
    engine = await make_engine(saga)
    order = {
        "order_no": "A-1",
        "amount": 12.5,
        "qty": 3,
        "gift": True,
        "nothing": None,
        "items": [{"sku": "X-9", "qty": 2}],
        "address": {"city": "Zürich"},
    }

    run = await engine.run(order)

    assert run.status is SagaStatus.COMPLETED
    (call,) = services.calls
    assert call.headers["x-order"] == "order-A-1/3"
    assert call.headers["content-type"] == "application/json"
    assert call.body == {
        "amount": 12.5,
        "qty": 3,
        "gift": True,
        "nothing": None,
        "items": [{"sku": "X-9", "qty": 2}],
        "address": {"city": "Zürich"},
        "first_sku": "X-9",
        "note": "order A-1: 3 x 12.5",
        "flags": 'gift=true address={"city":"Zürich"}',
        "literal": 7,
        "list": [3, "n3", False],
        "saga": run.detail.instance.id,
        "spaced": " 3",
    }
    assert type(call.body["qty"]) is int and type(call.body["amount"]) is float


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("%2E%2E", "%252E%252E"),
        ("...", "..."),
        ("//evil", "%2F%2Fevil"),
        ("http://x", "http%3A%2F%2Fx"),
        ("%2F%2F", "%252F%252F"),
        ("../../admin", "..%2F..%2Fadmin"),
        ("a b?c#d", "a%20b%3Fc%23d"),
        ("@evil.example", "%40evil.example"),
    ],
)
async def test_an_input_value_in_a_path_stays_one_encoded_segment_on_the_configured_service(
    make_engine: EngineFactory, services: FakeServices, value: str, encoded: str
) -> None:
    engine = await make_engine(one_step({"path": "/items/{{ input.sku }}/stock"}))

    run = await engine.run({"sku": value})

    assert run.status is SagaStatus.COMPLETED
    (call,) = services.calls
    assert call.service == "inventory"
    assert call.raw_path == f"/items/{encoded}/stock"
    assert call.segment(1) == value
    assert (
        run.detail.steps[0].execute_data["url"]
        == f"{services.urls['inventory']}/items/{encoded}/stock"
    )


async def test_a_path_value_that_cannot_be_one_segment_fails_the_step_without_a_call(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    engine = await make_engine(one_step({"path": "/items/{{ input.sku }}"}))

    run = await engine.run({"sku": {"nested": "/admin"}})

    assert services.calls == []
    assert run.status is SagaStatus.COMPENSATED
    step = run.detail.steps[0]
    assert step.status.value == "failed" and step.execute_data is None
    assert "cannot be used in a path" in (step.error or "")
    assert run.detail.instance.response == {"status": 422}, "the trigger's input is at fault"


@pytest.mark.parametrize("value", ["..", "."])
async def test_a_path_value_that_is_a_dot_segment_fails_the_step_without_a_call(
    make_engine: EngineFactory, services: FakeServices, value: str
) -> None:
    engine = await make_engine(one_step({"path": "/svc/{{ input.account }}/orders"}))

    run = await engine.run({"account": value})

    assert services.calls == []
    assert run.status is SagaStatus.COMPENSATED
    assert "dot segment" in (run.detail.steps[0].error or "")
    assert run.detail.instance.response == {"status": 422}, "the trigger's input is at fault"


async def test_a_later_step_reads_an_earlier_steps_status_headers_and_body(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan(
        "inventory",
        "POST /items",
        Reply(202, {"id": "r-9", "lines": [{"sku": "Q"}]}, {"Location": "/items/r-9"}),
    )
    saga = one_step({"path": "/items", "body": {"n": 1}})
    saga["steps"].append(
        {
            "name": "confirm",
            "action": {
                "service": "payments",
                "method": "PUT",
                "path": "/confirm/{{ steps.lookup.body.id }}",
                "headers": {"X-From": "{{ steps.lookup.headers.location }}"},
                "body": {
                    "status": "{{ steps.lookup.status }}",
                    "first": "{{ steps.lookup.body.lines.0 }}",
                    "where": "{{ steps.lookup.headers.Location }}",
                },
            },
        }
    )
    engine = await make_engine(saga)

    run = await engine.run({})

    assert run.status is SagaStatus.COMPLETED
    confirm = services.calls[1]
    assert confirm.line == "payments PUT /confirm/r-9"
    assert confirm.headers["x-from"] == "/items/r-9"
    assert confirm.body == {"status": 202, "first": {"sku": "Q"}, "where": "/items/r-9"}


@pytest.mark.parametrize(
    ("ref", "status"),
    [
        ("ok\r\nX-Injected: 1", 502),  # the earlier step's answer is at fault
        ("ok", 422),  # the trigger's input is
    ],
)
async def test_a_header_that_cannot_be_rendered_blames_the_lookup_that_broke_it(
    make_engine: EngineFactory, services: FakeServices, ref: str, status: int
) -> None:
    services.plan("inventory", "POST /items", Reply(201, {"ref": ref}))
    saga = one_step({"path": "/items", "body": {}})
    saga["steps"].append(
        {
            "name": "confirm",
            "action": {
                "service": "payments",
                "method": "POST",
                "path": "/confirm",
                "headers": {"X-Ref": "{{ input.order_no }}-{{ steps.lookup.body.ref }}"},
            },
        }
    )
    engine = await make_engine(saga)
    order_no = "A-1" if status == 502 else "A-1\nX-Injected: 1"

    run = await engine.run({"order_no": order_no})

    assert [call.line for call in services.calls] == ["inventory POST /items"]
    assert "CR, LF or NUL" in (run.detail.steps[1].error or "")
    assert run.detail.instance.response == {"status": status}
