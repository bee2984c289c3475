"""Prometheus rules and the Grafana dashboard: promtool accepts them and the unit tests pass.

That every metric they read is one the sidecar exports is checked against a live sidecar in
``test_live_sidecar``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from deploy.promql import (
    RULES_FILE,
    dashboard_expressions,
    job_selectors,
    load_dashboard,
    load_rules,
    parse_query,
    rule_expressions,
)
from deploy.tools import require_tool, run

UNIT_TESTS = Path(__file__).parent / "promtool" / "saga-sidecar.test.yaml"


def test_promtool_accepts_the_rules_file() -> None:
    result = run([require_tool("promtool"), "check", "rules", str(RULES_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run([require_tool("promtool"), "test", "rules", str(UNIT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_cover_the_failed_saga_alert_and_the_hit_ratio() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    alerts = {t["alertname"] for test in tests for t in test.get("alert_rule_test", [])}
    exprs = {t["expr"] for test in tests for t in test.get("promql_expr_test", [])}
    assert {"SagaFailed", "SagaSidecarHighReplayRate", "SagaStuck", "SagaSidecarDown"} <= alerts
    assert "saga_sidecar:idempotency_hit_ratio:rate5m" in exprs


def test_unit_tests_fire_every_upstream_and_step_alert() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {
        t["alertname"] for test in tests for t in test.get("alert_rule_test", []) if t["exp_alerts"]
    }
    assert {"SagaSidecarUpstreamErrors", "SagaSidecarUpstreamSlow", "SagaStepSlow"} <= fired
    exprs = {t["expr"] for test in tests for t in test.get("promql_expr_test", [])}
    assert "saga_sidecar:upstream_error_ratio:rate5m" in exprs


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_expressions()
    rules = [{"record": f"dashboard:query_{i}:check", "expr": e} for i, e in enumerate(exprs)]
    file = tmp_path / "dashboard.rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([require_tool("promtool"), "check", "rules", str(file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(exprs) >= 20


def test_every_query_selects_one_job() -> None:
    assert job_selectors(rule_expressions() + dashboard_expressions()) == {"saga-sidecar"}
    for expr in rule_expressions() + dashboard_expressions():
        for selector in parse_query(expr).selectors:
            assert ":" in selector.name or "job" in selector.labels, f"unscoped: {expr}"


def test_recording_rules_are_defined_before_they_are_used() -> None:
    recorded: set[str] = set()
    for rule in load_rules():
        for name in parse_query(rule["expr"]).metric_names:
            if ":" in name:
                assert name in recorded, f"{name} is used before it is recorded"
        if "record" in rule:
            recorded.add(rule["record"])


def test_every_alert_says_how_bad_and_what_happened() -> None:
    alerts = [rule for rule in load_rules() if "alert" in rule]
    assert len(alerts) >= 8
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_dashboard_panels_use_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${" + variable["name"] + "}", panel["title"]


def test_dashboard_panels_have_numeric_places_that_do_not_overlap() -> None:
    panels = load_dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        place = panel["gridPos"]
        assert all(type(place[k]) is int for k in ("h", "w", "x", "y")), panel["title"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        for x in range(place["x"], place["x"] + place["w"]):
            for y in range(place["y"], place["y"] + place["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]


def test_dashboard_shows_upstream_step_and_process_metrics() -> None:
    shown = {name for expr in dashboard_expressions() for name in parse_query(expr).metric_names}
    assert {
        "upstream_request_duration_seconds_bucket",
        "upstream_errors_total",
        "saga_step_duration_seconds_bucket",
        "saga_sidecar_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    } <= shown
