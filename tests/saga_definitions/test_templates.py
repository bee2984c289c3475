"""Templates: parsing, typed and text rendering, nested bodies, missing lookups, headers."""

from __future__ import annotations

from typing import Any

import pytest

from saga_runner.errors import TemplateError, TemplateRoot
from saga_runner.template import (
    Reference,
    RenderContext,
    StepResult,
    compile_body,
    compile_header,
    compile_json,
    compile_path,
    parse_template,
)

CTX = RenderContext(
    input={
        "order_no": "A-1",
        "amount": 42.5,
        "count": 3,
        "paid": True,
        "note": None,
        "items": [{"sku": "x1"}, {"sku": "x2"}],
        "meta": {"a": 1},
    },
    headers={"X-Tenant": "acme", "Authorization": "Bearer t"},
    saga_id="saga-1",
    business_id="A-1",
    steps={"create": StepResult(201, {"id": "ord_7", "tags": ["n"]}, {"Location": "/orders/7"})},
)


def render(text: str) -> Any:
    return parse_template(text).render(CTX)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ input.amount }}", 42.5),
        ("{{input.count}}", 3),
        ("{{ input.paid }}", True),
        ("{{ input.note }}", None),
        ("{{ input.meta }}", {"a": 1}),
        ("{{ input.items }}", [{"sku": "x1"}, {"sku": "x2"}]),
        ("{{ steps.create.status }}", 201),
    ],
)
def test_a_lone_template_keeps_the_json_type(text: str, expected: Any) -> None:
    assert render(text) == expected
    assert type(render(text)) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no {{ input.order_no }}", "no A-1"),
        ("{{ input.amount }} EUR", "42.5 EUR"),
        ("n={{ input.count }}", "n=3"),
        ("paid={{ input.paid }}", "paid=true"),
        ("note={{ input.note }}", "note=null"),
        ("meta={{ input.meta }}", 'meta={"a":1}'),
        ("{{ input.order_no }}/{{ saga.id }}", "A-1/saga-1"),
        ("plain text", "plain text"),
        ("", ""),
        ("{ single braces } and }}", "{ single braces } and }}"),
    ],
)
def test_mixed_text_interpolates_values_as_text(text: str, expected: str) -> None:
    assert render(text) == expected


def test_text_around_a_lone_template_makes_it_text() -> None:
    assert render(" {{ input.count }}") == " 3"
    assert render("{{ input.count }}\n") == "3\n"


def test_lookups_index_into_lists_and_objects() -> None:
    assert render("{{ input.items.1.sku }}") == "x2"
    assert render("{{ steps.create.body.tags.0 }}") == "n"


def test_saga_roots_resolve() -> None:
    assert render("{{ saga.id }}:{{ saga.business_id }}") == "saga-1:A-1"


def test_header_lookups_ignore_case() -> None:
    assert render("{{ headers.x-tenant }}") == "acme"
    assert render("{{ headers.X-TENANT }}") == "acme"
    assert render("{{ steps.create.headers.LOCATION }}") == "/orders/7"
    assert parse_template("{{ headers.X-Tenant }}").references == (
        Reference(("headers", "x-tenant")),
    )


def test_nested_body_renders_every_string_and_keeps_other_values() -> None:
    body = compile_body(
        {
            "order": {"no": "{{ input.order_no }}", "amount": "{{ input.amount }}"},
            "lines": ["{{ input.items.0 }}", "sku {{ input.items.1.sku }}", 7, None, False],
            "source": "sidecar",
        }
    )
    assert body.render(CTX) == {
        "order": {"no": "A-1", "amount": 42.5},
        "lines": [{"sku": "x1"}, "sku x2", 7, None, False],
        "source": "sidecar",
    }


def test_rendering_returns_fresh_containers_each_time() -> None:
    body = compile_body({"a": ["{{ input.count }}"]})
    first = body.render(CTX)
    first["a"].append("mutated")
    assert body.render(CTX) == {"a": [3]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ input.missing }}", "{{ input.missing }}: input has no key 'missing'"),
        ("{{ input.items.5 }}", "{{ input.items.5 }}: input.items has 2 items, no index 5"),
        ("{{ input.items.sku }}", "{{ input.items.sku }}: input.items is a list, 'sku' no index"),
        ("{{ input.order_no.x }}", "{{ input.order_no.x }}: input.order_no is str, it has no 'x'"),
        ("{{ input.note.x }}", "{{ input.note.x }}: input.note is null, it has no 'x'"),
        ("{{ headers.x-missing }}", "{{ headers.x-missing }}: headers has no key 'x-missing'"),
        ("{{ steps.later.body }}", "{{ steps.later.body }}: step 'later' has no result"),
        ("id {{ steps.create.body.nope }}", "steps.create.body has no key 'nope'"),
    ],
)
def test_missing_lookups_raise_template_error_naming_the_path(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ input.a", "'{{' without a closing '}}'"),
        ("a {{ }} b", "malformed template '{{ }}'"),
        ("{{ input..a }}", "malformed template"),
        ("{{ input.a + 1 }}", "malformed template"),
        ("{{ __import__('os') }}", "malformed template"),
        ("{{ env.HOME }}", "unknown root 'env'"),
        ("{{ saga.name }}", "the saga root has only saga.id and saga.business_id"),
        ("{{ steps.a }}", "a step lookup is steps.NAME.status"),
        ("{{ steps.a.result }}", "a step lookup is steps.NAME.status"),
        ("{{ steps.a.status.x }}", "steps.NAME.status is a number"),
        ("{{ headers.a.b }}", "a header value has no fields"),
        ("{{ {{ input.a }} }}", "malformed template"),
    ],
)
def test_malformed_templates_are_rejected_at_parse_time(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_template(text)
    assert message in str(caught.value)


def test_compile_json_reports_every_problem_with_its_location() -> None:
    _, problems = compile_json({"a": "{{ bad root }}", "b": ["ok", "{{ x.y }}"], "{{ k }}": 1})
    assert [loc for loc, _ in problems] == [("a",), ("b", 1), ("{{ k }}",)]
    assert problems[2][1] == "templates are not allowed in keys"


def test_header_value_rendering_to_cr_or_lf_is_refused() -> None:
    template = compile_header("{{ input.value }}")
    ctx = RenderContext(input={"value": "ok\r\nX-Injected: 1"})
    with pytest.raises(TemplateError, match="CR, LF or NUL"):
        template.render_header(ctx)
    assert template.render_header(RenderContext(input={"value": 12})) == "12"


def test_literal_header_value_with_newline_is_refused_at_parse_time() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        compile_header("a\nb")


@pytest.mark.parametrize(
    ("text", "root"),
    [
        ("{{ input.missing }}", TemplateRoot.INPUT),
        ("{{ headers.x-missing }}", TemplateRoot.HEADERS),
        ("{{ steps.later.body }}", TemplateRoot.STEPS),
        ("{{ input.order_no }} {{ steps.create.body.nope }}", TemplateRoot.STEPS),
    ],
)
def test_a_failed_lookup_names_its_root(text: str, root: TemplateRoot) -> None:
    with pytest.raises(TemplateError) as caught:
        render(text)
    assert caught.value.root is root
    assert caught.value.from_trigger is (root in (TemplateRoot.INPUT, TemplateRoot.HEADERS))


def test_a_header_value_that_cannot_be_sent_blames_the_lookup_that_holds_it() -> None:
    template = compile_header("{{ input.value }}-{{ steps.s.body }}")
    ctx = RenderContext(input={"value": "ok"}, steps={"s": StepResult(200, "a\nb")})
    with pytest.raises(TemplateError, match=r"\{\{ steps\.s\.body \}\}: .*CR, LF") as caught:
        template.render_header(ctx)
    assert caught.value.root is TemplateRoot.STEPS
    bad_input = RenderContext(input={"value": "a\rb"}, steps={"s": StepResult(200, "ok")})
    with pytest.raises(TemplateError) as caught:
        template.render_header(bad_input)
    assert caught.value.root is TemplateRoot.INPUT


def test_a_null_business_id_in_a_path_is_the_sagas_fault_not_the_clients() -> None:
    with pytest.raises(TemplateError, match="null") as caught:
        compile_path("/o/{{ saga.business_id }}").render_path(RenderContext())
    assert caught.value.root is TemplateRoot.SAGA and not caught.value.from_trigger


def test_a_literal_header_value_that_is_not_valid_unicode_is_refused_at_parse_time() -> None:
    with pytest.raises(ValueError, match="valid Unicode"):
        compile_header("a\ud800")
