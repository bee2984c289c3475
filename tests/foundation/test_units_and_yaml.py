"""Durations, sizes and ``${VAR}`` substitution: examples plus hypothesis properties."""

from __future__ import annotations

import math
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from yamlconfig.errors import ConfigError
from yamlconfig.loader import load_yaml, parse_yaml, substitute_env, validate
from yamlconfig.units import ByteSize, Duration, parse_duration, parse_size

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20, "GB": 10**9}
SIZE_UNITS["GiB"] = 2**30
ENV_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("30d", 2_592_000.0),
        ("1.5h", 5400.0),
        (" 10s ", 10.0),
        ("0s", 0.0),
        (2, 2.0),
        (0.5, 0.5),
    ],
)
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "value",
    ["10", "ten s", "-1s", "1w", "1h30m", "", "s", "1.s", True, None, [], -1, math.inf, math.nan],
)
def test_bad_durations_are_value_errors(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(DURATION_UNITS)))
def test_whole_durations_scale_exactly_by_their_unit(number: int, unit: str) -> None:
    assert parse_duration(f"{number}{unit}") == number * DURATION_UNITS[unit]


@given(
    st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False),
    st.sampled_from(sorted(DURATION_UNITS)),
)
def test_fractional_durations_scale_by_their_unit(number: object, unit: str) -> None:
    expected = float(str(number)) * DURATION_UNITS[unit]
    assert math.isclose(parse_duration(f"{number}{unit}"), expected)


@given(st.one_of(st.text(max_size=12), st.floats(), st.integers(), st.none()))
def test_any_input_is_a_finite_non_negative_duration_or_a_value_error(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return
    assert math.isfinite(seconds) and seconds >= 0


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        (512, 512),
        ("16KiB", 16384),
        ("100MiB", 100 * 2**20),
        ("1GB", 10**9),
        ("1.5KiB", 1536),
        ("10 MB", 10**7),
        ("0B", 0),
    ],
)
def test_sizes_parse_to_bytes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("value", ["-1", "1TB", "KB", "lots", "16 kib", "", 1.5, True, None, -5])
def test_bad_sizes_are_value_errors(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(SIZE_UNITS)))
def test_whole_sizes_scale_exactly_by_their_unit(number: int, unit: str) -> None:
    assert parse_size(f"{number}{unit}") == number * SIZE_UNITS[unit]


def test_duration_and_size_fields_validate_in_models() -> None:
    class Limits(BaseModel):
        timeout: Duration
        body: ByteSize

    limits = Limits.model_validate({"timeout": "300ms", "body": "1MiB"})
    assert (limits.timeout, limits.body) == (0.3, 2**20)


@given(ENV_NAMES, st.text(max_size=30))
def test_set_variables_are_substituted_verbatim(name: str, value: str) -> None:
    assert substitute_env(f"a-${{{name}}}-b", {name: value}) == f"a-{value}-b"
    assert substitute_env(f"${{{name}:-unused}}", {name: value}) == value


@given(ENV_NAMES, st.text(alphabet=string.printable.replace("}", ""), max_size=30))
def test_unset_variables_take_their_default(name: str, default: str) -> None:
    assert substitute_env(f"<${{{name}:-{default}}}>", {}) == f"<{default}>"


@given(ENV_NAMES)
def test_unset_variable_without_default_is_an_error_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match=f"environment variable {name} is not set"):
        substitute_env(f"${{{name}}}", {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("$$", "$"), ("$${X}", "${X}"), ("cost: 5$", "cost: 5$"), ("$X", "$X"), ("$$$$", "$$")],
)
def test_dollar_escapes_and_bare_dollars_are_literal(text: str, expected: str) -> None:
    assert substitute_env(text, {"X": "no"}) == expected


@pytest.mark.parametrize("text", ["${", "a ${X", "${}", "${1X}", "${X:default}", "${X Y}"])
def test_malformed_references_are_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"unterminated|bad environment reference"):
        substitute_env(text, {"X": "x"})


class Sample(BaseModel, extra="forbid"):
    """A small model to validate YAML documents against."""

    url: str
    timeout: Duration = 1.0


def test_validate_reports_deferred_substitution_errors_with_validation_errors() -> None:
    doc = parse_yaml("url: ${NOPE}\ntimeout: soon\nextra: 1\n", "f.yaml", {}, defer_issues=True)
    with pytest.raises(ConfigError) as caught:
        validate(doc, Sample)
    assert [str(issue) for issue in caught.value.issues] == [
        "f.yaml:1: url: environment variable NOPE is not set (write ${NOPE:-default})",
        "f.yaml:2: timeout: expected a duration like 250ms, 30s, 5m or 24h, got 'soon'",
        "f.yaml:3: extra: unknown key (expected one of url, timeout)",
    ]


def test_load_yaml_raises_substitution_errors_unless_deferred(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("url: ${NOPE}\n")
    with pytest.raises(ConfigError, match="NOPE is not set"):
        load_yaml(path, {})
    assert load_yaml(path, {}, defer_issues=True).issues


def test_merge_keys_apply_with_explicit_keys_winning() -> None:
    text = "base: &b {url: u, timeout: 1s}\nitem:\n  <<: *b\n  timeout: 2s\n"
    doc = parse_yaml(text, "f.yaml", {})
    assert doc.data["item"] == {"url": "u", "timeout": "2s"}
    assert doc.line_of(("item", "timeout")) == 4


def test_duplicate_keys_are_errors_at_the_second_occurrence() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml("url: a\ntimeout: 1s\nurl: b\n", "f.yaml", {})
    assert [str(issue) for issue in caught.value.issues] == ["f.yaml:3: url: duplicate key"]
