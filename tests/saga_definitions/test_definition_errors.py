"""Saga file validation: every kind of error reported as ``FILE:LINE: key.path: message``."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga_runner.definition import SagaDefinition, load_definition
from yamlconfig.errors import ConfigError

from .helpers import SERVICES, VALID, errors, load, write


def one_step(action: str, extra: str = "") -> str:
    """A saga whose single step has the given action lines (indented under ``action:``)."""
    return (
        "name: s\n"
        "trigger: {method: POST, path: /t}\n"
        "steps:\n"
        "  - name: only\n"
        "    action:\n" + "".join(f"      {line}\n" for line in action.splitlines()) + extra
    )


def test_the_valid_fixture_loads(tmp_path: Path) -> None:
    assert load(tmp_path, VALID).name == "demo"


def test_duplicate_step_names_point_at_the_second_name(tmp_path: Path) -> None:
    text = VALID.replace("  - name: second", "  - name: first")
    assert errors(tmp_path, text) == [
        "saga.yaml:15: steps[1].name: duplicate step name 'first' (steps[0])",
        "saga.yaml:23: response.body.second: "
        "template '{{ steps.second.body }}' refers to unknown step 'second'",
    ]


def test_reference_to_an_unknown_step(tmp_path: Path) -> None:
    text = VALID.replace('order: "{{ steps.first.body.id }}"', 'order: "{{ steps.frist.body.id }}"')
    assert errors(tmp_path, text) == [
        "saga.yaml:20: steps[1].action.body.order: "
        "template '{{ steps.frist.body.id }}' refers to unknown step 'frist'",
    ]


def test_action_reference_to_a_later_step(tmp_path: Path) -> None:
    text = VALID.replace('"{{ input.order_no }}"}', '"{{ steps.second.status }}"}')
    assert errors(tmp_path, text) == [
        "saga.yaml:10: steps[0].action.body.order_no: "
        "template '{{ steps.second.status }}' refers to step 'second', which runs later",
    ]


def test_action_reference_to_its_own_step(tmp_path: Path) -> None:
    text = VALID.replace("path: /orders\n", "path: /orders/{{ steps.first.body.id }}\n")
    assert errors(tmp_path, text) == [
        "saga.yaml:9: steps[0].action.path: template '{{ steps.first.body.id }}' "
        "refers to its own step; only the step's compensation can use its result",
    ]


def test_compensation_may_use_its_own_step_but_not_a_later_one(tmp_path: Path) -> None:
    assert load(tmp_path, VALID).steps[0].compensation is not None
    text = VALID.replace(
        'path: "/orders/{{ steps.first.body.id }}"', 'path: "/orders/{{ steps.second.body.id }}"'
    )
    assert errors(tmp_path, text) == [
        "saga.yaml:14: steps[0].compensation.path: "
        "template '{{ steps.second.body.id }}' refers to step 'second', which runs later",
    ]


def test_response_may_use_every_step_but_not_unknown_ones(tmp_path: Path) -> None:
    text = VALID.replace('second: "{{ steps.second.body }}"', 'third: "{{ steps.third.body }}"')
    assert errors(tmp_path, text) == [
        "saga.yaml:23: response.body.third: "
        "template '{{ steps.third.body }}' refers to unknown step 'third'",
    ]


def test_business_id_cannot_use_steps(tmp_path: Path) -> None:
    text = VALID.replace('"{{ input.order_no }}"\n', '"{{ steps.first.status }}"\n', 1)
    assert errors(tmp_path, text) == [
        "saga.yaml:3: business_id: template '{{ steps.first.status }}' refers to a step; "
        "business_id can use only input, headers and saga.id",
    ]


def test_saga_business_id_needs_a_business_id(tmp_path: Path) -> None:
    text = VALID.replace('business_id: "{{ input.order_no }}"\n', "").replace(
        "{{ input.order_no }}", "{{ saga.business_id }}"
    )
    assert errors(tmp_path, text) == [
        "saga.yaml:9: steps[0].action.body.order_no: template '{{ saga.business_id }}' "
        "refers to saga.business_id but the saga declares no business_id",
    ]


def test_unknown_template_root_and_malformed_braces(tmp_path: Path) -> None:
    text = one_step(
        "service: orders\nmethod: POST\npath: /x\n"
        'headers: {X-A: "{{ env.HOME }}"}\n'
        'body: {a: "{{ input.a", b: ["{{ input.a + 1 }}"]}'
    )
    assert errors(tmp_path, text) == [
        "saga.yaml:9: steps[0].action.headers.X-A: "
        "template '{{ env.HOME }}': unknown root 'env' (use input, headers, saga or steps)",
        "saga.yaml:10: steps[0].action.body.a: '{{' without a closing '}}' in '{{ input.a'",
        "saga.yaml:10: steps[0].action.body.b[0]: malformed template '{{ input.a + 1 }}': "
        "expected a dotted path like input.order_no",
    ]


def test_unknown_service_lists_the_configured_ones(tmp_path: Path) -> None:
    text = one_step("service: invoices\nmethod: POST\npath: /x")
    assert errors(tmp_path, text) == [
        "saga.yaml:6: steps[0].action.service: "
        "unknown service 'invoices' (services: orders, payments)",
    ]


def test_bad_method(tmp_path: Path) -> None:
    text = one_step("service: orders\nmethod: POTS\npath: /x")
    assert errors(tmp_path, text) == [
        "saga.yaml:7: steps[0].action.method: unsupported HTTP method 'POTS' "
        "(use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)",
    ]


def test_lower_case_method_is_normalised(tmp_path: Path) -> None:
    definition = load(tmp_path, one_step("service: orders\nmethod: post\npath: /x"))
    assert definition.steps[0].action.method == "POST"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("orders", "path must start with a single '/', got 'orders'"),
        ("//evil.example/x", "path must start with a single '/', got '//evil.example/x'"),
        ("/a/../b", "path must not contain '.' or '..' segments: '/a/../b'"),
    ],
)
def test_call_path_must_be_a_safe_absolute_path(tmp_path: Path, path: str, message: str) -> None:
    text = one_step(f"service: orders\nmethod: GET\npath: {path}")
    assert errors(tmp_path, text) == [f"saga.yaml:8: steps[0].action.path: {message}"]


def test_trigger_path_and_method_are_checked(tmp_path: Path) -> None:
    text = VALID.replace(
        "trigger: {method: POST, path: /api/demo}", "trigger:\n  method: SEND\n  path: /api/{{ x }}"
    )
    assert errors(tmp_path, text) == [
        "saga.yaml:3: trigger.method: unsupported HTTP method 'SEND' "
        "(use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)",
        "saga.yaml:4: trigger.path: must be a plain absolute path like /api/v1/payments, "
        "got '/api/{{ x }}'",
    ]


def test_bad_retry_and_timeout_values(tmp_path: Path) -> None:
    extra = (
        "    retry: {attempts: 0, backoff: soon}\n"
        "    timeout: 0s\n"
        "    compensation:\n"
        "      service: orders\n"
        "      method: DELETE\n"
        "      path: /x\n"
        "      retry:\n"
        "        backoff: 2s\n"
        "        max_backoff: 1s\n"
    )
    text = one_step("service: orders\nmethod: POST\npath: /x", extra)
    assert errors(tmp_path, text) == [
        "saga.yaml:9: steps[0].retry.attempts: Input should be greater than or equal to 1, got 0",
        "saga.yaml:9: steps[0].retry.backoff: "
        "expected a duration like 250ms, 30s, 5m or 24h, got 'soon'",
        "saga.yaml:10: steps[0].timeout: must be greater than 0",
        "saga.yaml:17: steps[0].compensation.retry.max_backoff: "
        "max_backoff (1s) must not be less than backoff (2s)",
    ]


def test_status_codes_outside_100_to_599(tmp_path: Path) -> None:
    text = one_step("service: orders\nmethod: POST\npath: /x\nsuccess: [200, 99, 600]")
    text += "response:\n  status: 1000\n"
    assert errors(tmp_path, text) == [
        "saga.yaml:9: steps[0].action.success[1]: HTTP status must be between 100 and 599, got 99",
        "saga.yaml:9: steps[0].action.success[2]: HTTP status must be between 100 and 599, got 600",
        "saga.yaml:11: response.status: HTTP status must be between 100 and 599, got 1000",
    ]


def test_unknown_keys_and_missing_keys(tmp_path: Path) -> None:
    text = one_step("service: orders\nmethod: POST\npth: /x", "    retries: 3\n")
    assert errors(tmp_path, text) == [
        "saga.yaml:5: steps[0].action.path: required key is missing",
        "saga.yaml:8: steps[0].action.pth: unknown key, did you mean 'path'?",
        "saga.yaml:9: steps[0].retries: unknown key, did you mean 'retry'?",
    ]


def test_reserved_and_invalid_header_names(tmp_path: Path) -> None:
    text = one_step("service: orders\nmethod: POST\npath: /x\nheaders: {Idempotency-Key: k}")
    text += "response:\n  headers:\n    Bad Name: x\n"
    assert errors(tmp_path, text) == [
        "saga.yaml:9: steps[0].action.headers.Idempotency-Key: "
        "header 'Idempotency-Key' cannot be set in a saga file",
        "saga.yaml:12: response.headers.Bad Name: 'Bad Name' is not a valid header name",
    ]


def test_header_value_with_a_newline(tmp_path: Path) -> None:
    text = one_step('service: orders\nmethod: POST\npath: /x\nheaders: {X-A: "a\\nb"}')
    assert errors(tmp_path, text) == [
        "saga.yaml:9: steps[0].action.headers.X-A: header value must not contain CR, LF or NUL",
    ]


def test_a_saga_needs_steps(tmp_path: Path) -> None:
    assert errors(tmp_path, "name: s\ntrigger: {method: POST, path: /t}\nsteps: []\n") == [
        "saga.yaml:3: steps: a saga needs at least one step",
    ]


def test_an_empty_file_reports_the_required_keys(tmp_path: Path) -> None:
    assert errors(tmp_path, "") == [
        "saga.yaml:1: name: required key is missing",
        "saga.yaml:1: steps: required key is missing",
        "saga.yaml:1: trigger: required key is missing",
    ]


def test_schema_and_template_errors_are_reported_together(tmp_path: Path) -> None:
    text = VALID.replace("mode: sync\n", "").replace(
        "trigger: {method: POST, path: /api/demo}",
        "trigger: {method: POST, path: /api/demo}\nmode: later",
    )
    text = text.replace("service: payments", "service: billing").replace(
        'second: "{{ steps.second.body }}"', 'second: "{{ steps.second.bdy }}"'
    )
    assert errors(tmp_path, text) == [
        "saga.yaml:3: mode: 'later' is not one of 'sync', 'async'",
        "saga.yaml:18: steps[1].action.service: "
        "unknown service 'billing' (services: orders, payments)",
        "saga.yaml:24: response.body.second: template '{{ steps.second.bdy }}': "
        "a step lookup is steps.NAME.status, steps.NAME.body or steps.NAME.headers",
    ]


def test_yaml_syntax_errors_are_located(tmp_path: Path) -> None:
    assert errors(tmp_path, "name: s\nsteps: [\n") == [
        "saga.yaml:3: YAML syntax error: while parsing a flow node expected the node content, "
        "but found '<stream end>'",
    ]


def test_direct_model_validation_enforces_step_order_too() -> None:
    data = {
        "name": "s",
        "trigger": {"method": "POST", "path": "/t"},
        "steps": [
            {
                "name": "a",
                "action": {"service": "x", "method": "GET", "path": "/{{ steps.b.status }}"},
            },
            {"name": "b", "action": {"service": "x", "method": "GET", "path": "/b"}},
        ],
    }
    with pytest.raises(ValueError, match="refers to step 'b', which runs later"):
        SagaDefinition.model_validate(data)


def test_services_are_not_checked_without_a_service_list(tmp_path: Path) -> None:
    path = write(tmp_path, one_step("service: anything\nmethod: GET\npath: /x"))
    assert load_definition(path, None, env={}).steps[0].action.service == "anything"
    with pytest.raises(ConfigError, match="unknown service 'anything'"):
        load_definition(path, SERVICES, env={})
