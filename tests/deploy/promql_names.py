"""Helpers of the deployment tests: the metric names a PromQL expression reads, the series
names a /metrics page exposes, and the expressions shipped in deploy/.

The PromQL scan is lexical, not a parser: it drops strings, label matchers, range and
subquery brackets and grouping clauses, then keeps identifiers that are not followed by ``(``
(functions) and are not keywords. That is exact for the expressions written in this repository
(tested on examples below) and errs towards reporting too much, which makes the tests stricter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamvgan.json"

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan", "atan2",
}
#: Series that Prometheus itself produces; an expression may read them.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)")
_LABEL_VALUES = re.compile(r"label_values\(\s*(?:([^,()]+?)\s*,\s*)?(\w+)\s*\)")


def metric_names(expr: str) -> set[str]:
    """Metric names read by the PromQL (or Grafana templating) expression ``expr``.

    >>> sorted(metric_names('sum by (job, le) (rate(a_bucket{x="y"}[5m])) > 0.25 and on (job) b'))
    ['a_bucket', 'b']
    >>> sorted(metric_names('time() - max by (instance) (c{job=~"$job"} > 0)'))
    ['c']
    >>> sorted(metric_names('label_values(streamvgan_service_ready{job=~"$job"}, instance)'))
    ['streamvgan_service_ready']
    >>> sorted(metric_names('histogram_quantile(0.99, sum by (le) (rate(d[$__rate_interval])))'))
    ['d']
    """
    text = expr
    found: set[str] = set()
    for match in _LABEL_VALUES.finditer(text):
        if match.group(1):
            found |= metric_names(match.group(1))
    text = _LABEL_VALUES.sub(" ", text)
    text = _STRING.sub('""', text)
    text = _GRAFANA_VAR.sub("1", text)
    while True:  # nested matchers/brackets do not occur, but loop until stable anyway
        reduced = _BRACKETS.sub(" ", _MATCHERS.sub(" ", text))
        if reduced == text:
            break
        text = reduced
    text = _GROUPING.sub(" ", text)
    for match in _IDENT.finditer(text):
        name = match.group(1)
        if text[match.end():].lstrip().startswith("("):
            continue  # a function call
        if name.lower() in _KEYWORDS or re.fullmatch(r"\d", name[0]):
            continue
        found.add(name)
    return found


def exposed_series(exposition: str) -> set[str]:
    """Series names a Prometheus text exposition offers, from its ``# TYPE`` lines (so a
    labelled metric that has no child yet counts too) and its sample lines."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind in ("histogram", "gaugehistogram"):
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {name, f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def alert_rules() -> list[dict]:
    """The rules of deploy/prometheus/alerts.yml, every group flattened."""
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(board: dict | None = None) -> Iterator[dict]:
    """Every panel, including those nested in collapsed rows."""
    for panel in (board or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(board: dict | None = None) -> list[tuple[str, str]]:
    """(where, expr) for every query of the dashboard: panel targets and template variables."""
    board = board or dashboard()
    out = []
    for panel in dashboard_panels(board):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']!r}", query))
    return out


def all_expressions() -> list[tuple[str, str]]:
    """(where, expr) of every alert rule and every dashboard query."""
    return [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()] + dashboard_expressions()


def unknown_names(exposed: set[str]) -> dict[str, set[str]]:
    """``where -> names`` for every shipped expression that reads a metric not in ``exposed``."""
    allowed = exposed | PROMETHEUS_SERIES
    bad = {}
    for where, expr in all_expressions():
        missing = metric_names(expr) - allowed
        if missing:
            bad[where] = missing
    return bad
