"""The Grafana dashboard and the alert rules: structure, coverage of what an operator needs,
and every PromQL expression reads only metrics the service registers.

The same name check runs against a live /metrics page of a running service in
test_prometheus_live.py; here it uses the exposition of a fresh ``ServiceMetrics``, so it also
runs where no broker or Prometheus is available.
"""

from __future__ import annotations

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from promql_names import (
    DEPLOY,
    alert_rules,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    exposed_series,
    metric_names,
    unknown_names,
)

from streamvgan.service.metrics import ServiceMetrics

#: What the dashboard must show (issue: throughput in/out, latency quantiles, lag, dead letters
#: by reason, streams tracked, model version and fine-tune losses, score distribution).
REQUIRED_DASHBOARD_METRICS = {
    "streamvgan_consumer_records_consumed_total",
    "streamvgan_producer_records_produced_total",
    "streamvgan_pipeline_latency_seconds_bucket",
    "streamvgan_consumer_lag_records",
    "streamvgan_consumer_records_dead_lettered_total",
    "streamvgan_engine_streams",
    "streamvgan_model_version",
    "streamvgan_finetune_loss",
    "streamvgan_scores_anomaly_score_bucket",
}
REQUIRED_ALERTS = {
    "StreamvganConsumerLagGrowing",
    "StreamvganDeadLetterRateHigh",
    "StreamvganFineTuneStale",
    "StreamvganScoringLatencyHigh",
    "StreamvganAnomalyRateSpike",
}


def _registered_series() -> set[str]:
    return exposed_series(generate_latest(ServiceMetrics(CollectorRegistry()).registry).decode())


def test_every_expression_reads_only_metrics_the_service_registers():
    assert unknown_names(_registered_series()) == {}


def test_the_name_check_catches_a_misspelt_metric():
    exposed = _registered_series()
    assert metric_names("rate(streamvgan_consumer_records_consumd_total[5m])") - exposed == {
        "streamvgan_consumer_records_consumd_total"
    }


def test_dashboard_shows_what_an_operator_needs():
    used = set().union(*(metric_names(e) for _, e in dashboard_expressions()))
    assert REQUIRED_DASHBOARD_METRICS <= used
    titles = {p["title"] for p in dashboard_panels()}
    assert {"Throughput in and out", "Consumer lag by partition", "Dead letters by reason",
            "Fine-tune losses", "Anomaly score distribution"} <= titles
    latency = next(p for p in dashboard_panels() if p["title"].startswith("End-to-end latency"))
    quantiles = {t["expr"].split(",")[0].removeprefix("histogram_quantile(")
                 for t in latency["targets"] if "histogram_quantile" in t["expr"]}
    assert quantiles == {"0.5", "0.9", "0.99"}
    dead = next(p for p in dashboard_panels() if p["title"] == "Dead letters by reason")
    (target,) = dead["targets"]
    assert "reason" in target["expr"] and "{{reason}}" in target["legendFormat"]


def test_dashboard_layout_ids_and_datasource():
    board = dashboard()
    assert board["uid"] == "streamvgan" and board["schemaVersion"] >= 36
    panels = list(dashboard_panels(board))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] >= 1
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another at {(x, y)}"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(t["datasource"] == p["datasource"] for t in p["targets"])
            assert p.get("description"), f"panel {p['title']!r} has no description"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # every query filters on the job and replica variables
    for where, expr in dashboard_expressions(board):
        if where.startswith("panel"):
            assert expr.count('job=~"$job"') == expr.count("streamvgan_"), where


def test_provisioned_datasource_is_prometheus():
    provisioning = DEPLOY / "grafana" / "provisioning"
    data = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = data["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True


def test_alert_rules_cover_the_required_cases_and_say_what_to_do():
    rules = {r["alert"]: r for r in alert_rules()}
    assert REQUIRED_ALERTS <= set(rules)
    operations = (DEPLOY.parent / "docs" / "operations.md").read_text().lower()
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == name.lower()
        assert f"### {name.lower()}" in operations, f"docs/operations.md has no section {name}"
