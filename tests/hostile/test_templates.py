"""Property tests over template strings: any text either compiles or is a ValueError (a located
``check`` error), and a compiled template rendered over any input either renders or raises
TemplateError; a path never leaves its service, a header value never splits a header."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import unquote, urlsplit

from hypothesis import example, given, settings
from hypothesis import strategies as st

from hostile.conftest import examples
from saga_runner.errors import TemplateError
from saga_runner.template import (
    RenderContext,
    StepResult,
    build_url,
    compile_header,
    compile_json,
    compile_path,
    parse_template,
)

BASE = "http://127.0.0.1:3001/api"
REFERENCES = ["{{ input.v }}", "{{input}}", "{{ input.v.0 }}", "{{ headers.x-v }}", "{{ saga.id }}",
              "{{ steps.s.body.v }}", "{{ steps.s.status }}", "{{ steps.s.headers.h }}",
              "{{ steps.nope.body }}", "{{ }}", "{{", "}}", "{{{ input.v }}}"]  # fmt: skip
PATH_NOISE = ["/", "//", "..", ".", "%2F", "%2e%2e", "%2E", ".%2e", "\\", "?", "#", "@", ":",
              "http://evil/", " ", "\r\n", "\x00", "é", "a"]  # fmt: skip

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=30)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text
    | st.sampled_from(["..", ".", "%2e", "//evil", "http://evil/x", "%2F%2F", "a\r\nHost: evil",
                       "\\\\h"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
template_text = st.lists(
    st.sampled_from(REFERENCES) | st.sampled_from(PATH_NOISE) | any_text, max_size=6
).map("".join)


def context(value: Any, header: str) -> RenderContext:
    return RenderContext(
        input={"v": value},
        headers={"x-v": header},
        saga_id="saga-1",
        steps={"s": StepResult(200, {"v": value}, {"h": header})},
    )


@settings(max_examples=examples(300), deadline=None)
@given(text=template_text, value=values, header=any_text)
def test_any_template_text_parses_or_is_a_value_error_and_renders_or_is_a_template_error(
    text: str, value: Any, header: str
) -> None:
    try:
        template = parse_template(text)
    except ValueError:
        return
    try:
        template.render(context(value, header))
        template.render_text(context(value, header))
    except TemplateError:
        pass


@settings(max_examples=examples(300), deadline=None)
@given(text=template_text.map(lambda t: "/" + t), value=values, header=any_text)
@example(text="/{{ headers.x-v }}", value=None, header="\ud800")  # found by make chaos
def test_a_rendered_path_stays_under_the_service_base_url(
    text: str, value: Any, header: str
) -> None:
    try:
        template = compile_path(text)
    except ValueError:
        return
    try:
        url = build_url(BASE, template.render_path(context(value, header)))
    except TemplateError:
        return
    parts = urlsplit(str(url))
    assert (parts.scheme, parts.netloc) == ("http", "127.0.0.1:3001")
    assert parts.path.startswith("/api/")
    # No segment a server would resolve as a step, however its dots are spelled.
    assert not {unquote(segment) for segment in parts.path.split("/")} & {".", ".."}
    assert not parts.fragment


@settings(max_examples=examples(300), deadline=None)
@given(text=template_text, value=values, header=any_text)
@example(text="{{ headers.x-v }}", value=None, header="\udcff")
def test_a_rendered_header_value_never_holds_cr_lf_or_nul(
    text: str, value: Any, header: str
) -> None:
    try:
        template = compile_header(text)
    except ValueError:
        return
    try:
        rendered = template.render_header(context(value, header))
    except TemplateError:
        return
    assert not set(rendered) & {"\r", "\n", "\x00"}
    rendered.encode("utf-8")  # the HTTP client can send it


@settings(max_examples=examples(200), deadline=None)
@given(body=values, value=values, header=any_text)
def test_any_json_body_compiles_with_located_problems_and_renders_or_is_a_template_error(
    body: Any, value: Any, header: str
) -> None:
    compiled, problems = compile_json(body)
    for loc, message in problems:
        assert isinstance(loc, tuple) and message
    if problems:
        return
    with contextlib.suppress(TemplateError):
        compiled.render(context(value, header))
