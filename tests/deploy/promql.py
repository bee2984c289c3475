"""What the Prometheus rules and the Grafana dashboard query: metric names and label names.

A deliberately small PromQL reader, enough for our own expressions: it finds every vector
selector (``name{label="v"}`` and bare names), every grouping clause (``by``/``without``/``on``/
``ignoring``/``group_left``/``group_right``) and every ``job`` matcher. Selectors by
``__name__`` are refused: the names they match could not be checked. Syntax itself is checked by
promtool, not here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from deploy.tools import DEPLOY

RULES_FILE = DEPLOY / "prometheus" / "saga-sidecar.rules.yaml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "saga-sidecar.json"
# Labels Prometheus attaches to every scraped series (static configs and the PodMonitor).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container"})
# Series Prometheus makes itself for every target.
SYNTHETIC_METRICS = frozenset({"up"})
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}

_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_NOISE = re.compile(
    r'\[[^\]]*\]|\boffset\s+-?\w+|"(?:[^"\\]|\\.)*"|\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b'
)
_IDENT = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "inf", "nan", "offset", "__selector__"})


@dataclass(frozen=True)
class Selector:
    """One vector selector: the metric name and the label names it filters on."""

    name: str
    labels: frozenset[str]


@dataclass(frozen=True)
class Query:
    """What one expression reads: its selectors and the labels it groups or matches on."""

    expr: str
    selectors: tuple[Selector, ...]
    grouping: frozenset[str]

    @property
    def metric_names(self) -> frozenset[str]:
        """Every metric name the expression selects."""
        return frozenset(s.name for s in self.selectors)


def _selector(name: str | None, body: str) -> Selector:
    labels = {label for label, _, _ in _MATCHER.findall(body)}
    assert name and "__name__" not in labels, f"select by metric name, not {{{body}}}"
    return Selector(name, frozenset(labels))


def parse_query(expr: str) -> Query:
    """Read the selectors and grouping labels of ``expr``."""
    selectors = [_selector(m.group(1), m.group(2)) for m in _SELECTOR.finditer(expr)]
    rest = _SELECTOR.sub(" __selector__ ", expr)
    grouping = {label.strip() for m in _GROUPING.finditer(rest) for label in m.group(1).split(",")}
    rest = _NOISE.sub(" ", _GROUPING.sub(" ", rest))
    for match in _IDENT.finditer(rest):
        name, call = match.group(1), match.group(2)
        if call is None and name not in _KEYWORDS:
            selectors.append(Selector(name, frozenset()))
    return Query(expr, tuple(selectors), frozenset(g for g in grouping if g))


def load_rules() -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of the rules file."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def rule_expressions() -> list[str]:
    """The ``expr`` of every rule."""
    return [rule["expr"] for rule in load_rules()]


def recorded_labels() -> dict[str, frozenset[str]]:
    """Each recording rule's name and the labels its result keeps (its grouping labels)."""
    return {
        rule["record"]: parse_query(rule["expr"]).grouping
        for rule in load_rules()
        if "record" in rule
    }


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    for panel in panels:
        result.append(panel)
        result.extend(_panels(panel.get("panels", [])))
    return result


def load_dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return dashboard


def dashboard_expressions() -> list[str]:
    """Every panel query of the dashboard, with Grafana's variables replaced by PromQL values."""
    exprs = []
    for panel in _panels(load_dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unknown Grafana variable in {target['expr']}"
            exprs.append(expr)
    return exprs


def job_selectors(exprs: list[str]) -> set[str]:
    """Every value a ``job="..."`` matcher in ``exprs`` selects."""
    return {value for expr in exprs for value in re.findall(r'\bjob\s*=\s*"([^"]*)"', expr)}
