"""A real Prometheus server (Debian package `prometheus`) scrapes a running service.

The service runs in this process against the session's broker; Prometheus runs on loopback
with a temporary storage directory, the shipped prometheus.yml (targets pointed at the
service, 1 s scrape and evaluation intervals) and the shipped alerts.yml. The test then:

* checks every dashboard and alert expression against the live /metrics page;
* finds the service's series through Prometheus' HTTP API, with the values that were sent;
* sends dead letters at a 25 % rate and sees the dead-letter alert go pending, and every
  rule evaluate without error.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from promql_names import ALERTS, PROMETHEUS_CONFIG, alert_rules, exposed_series, unknown_names

from streamvgan.service.app import Application
from streamvgan.service.settings import Settings
from waiting import wait_until

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not found: install Debian's 'prometheus' package (`make system-deps`)",
    ),
]
# Cheap engine settings: a first fit after 40 events on 16-point windows, a few optimiser steps,
# a tiny network.
ENGINE = {"init": "random", "first_fit_steps": 3, "fit_steps": 2, "hidden_size": 8, "batch_size": 8,
          "window": 16, "burn_in": 4, "critic_window": 8, "replay_size": 32}
BAD_RECORDS = [b"\xff\xfe", b"not json", b"[1, 2]", b'{"stream": "a", "ts": 1, "value": NaN}',
               b'{"stream": "a", "ts": 1, "value": "high"}']


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class PrometheusServer:
    """``prometheus`` on 127.0.0.1 scraping ``target``; stopped by pid."""

    def __init__(self, target: str, workdir: Path) -> None:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(ALERTS)]
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamvgan"]
        job["scrape_interval"] = "1s"
        job["static_configs"] = [{"targets": [target]}]
        config["scrape_configs"] = [job]
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config_path}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = _get(f"{self.url}/api/v1/{path}{query}")
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", (path, params, body)
        return data["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            return _get(f"{self.url}/-/ready")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def service(kafka, tmp_path) -> Iterator[Application]:
    settings = Settings(
        bootstrap_servers=kafka.bootstrap_servers, input_topic=kafka.topic("deploy"),
        group_id=kafka.group("deploy"),
        metrics_host="127.0.0.1", metrics_port=0, commit_interval_s=1.0,
        checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_interval_s=2.0,
        warmup_events=40, fit_every=40, fine_tune_interval_s=0.2,
        horizon=4, forecast_every=10, continuation_every=0, engine_params=ENGINE,
    )
    app = Application(settings, registry=CollectorRegistry()).start()
    try:
        assert app.wait_started(60), "the service did not start"
        yield app
    finally:
        app.stop()
        assert app.join(60) == 0


def _records(start: int, n_valid: int) -> Iterator[tuple[bytes | None, bytes]]:
    """``n_valid`` events of two streams and, after every third, a malformed record
    (``n_valid / 3`` of them: 25 % of all records)."""
    for i in range(start, start + n_valid):
        stream = f"host-{i % 2}/cpu"
        value = {"stream": stream, "ts": 1_700_000_000_000 + i, "value": float(i % 7)}
        yield stream.encode(), json.dumps(value).encode()
        if i % 3 == 2:
            yield None, BAD_RECORDS[(i // 3) % len(BAD_RECORDS)]


def test_prometheus_scrapes_the_service_and_evaluates_the_alert_rules(kafka, service, tmp_path):
    topic = service.settings.input_topic
    metrics = f"http://127.0.0.1:{service.metrics_port}"
    prometheus = PrometheusServer(f"127.0.0.1:{service.metrics_port}", tmp_path)
    try:
        # Round 1: valid and malformed records, so every labelled metric has a child.
        kafka.produce(topic, _records(0, 60))
        wait_until(lambda: service.stats.consumed >= 80, "the first 80 records")
        wait_until(lambda: service.engine.model_version >= 1, "a fine-tune")
        wait_until(lambda: _get(f"{metrics}/readyz")[0] == 200, "readiness")
        assert _get(f"{metrics}/healthz")[0] == 200

        # The shipped expressions against the live page.
        status, page = _get(f"{metrics}/metrics")
        assert status == 200
        live = exposed_series(page)
        assert unknown_names(live) == {}
        assert "streamvgan_finetune_loss" in live and "streamvgan_consumer_lag_records" in live

        wait_until(prometheus.ready, "Prometheus to start", timeout_s=30)
        consumed = f'streamvgan_consumer_records_consumed_total{{topic="{topic}"}}'
        dead = f'sum(streamvgan_consumer_records_dead_lettered_total{{topic="{topic}"}})'
        wait_until(lambda: [r for r in prometheus.query(consumed) if float(r["value"][1]) == 80]
                   and [r for r in prometheus.query(dead) if float(r["value"][1]) == 20],
                   "the first round in Prometheus")
        (series,) = prometheus.query(consumed)
        assert series["metric"]["job"] == "streamvgan"
        assert series["metric"]["instance"] == f"127.0.0.1:{service.metrics_port}"
        reasons = {r["metric"]["reason"] for r in prometheus.query(
            f'streamvgan_consumer_records_dead_lettered_total{{topic="{topic}"}}')}
        assert reasons == {"invalid_utf8", "invalid_json", "not_an_object", "non_finite", "schema"}
        assert float(prometheus.query("streamvgan_service_ready")[0]["value"][1]) == 1
        assert float(prometheus.query("streamvgan_model_version")[0]["value"][1]) >= 1

        # Round 2: the counters grow, so rate() has an increase to measure.
        kafka.produce(topic, _records(60, 60))
        wait_until(lambda: service.stats.consumed >= 160, "the second round")
        rule = next(r for r in alert_rules() if r["alert"] == "StreamvganDeadLetterRateHigh")
        result = wait_until(lambda: prometheus.query(rule["expr"]),
                            "the dead-letter alert expression to hold", timeout_s=20)
        assert [r["metric"]["topic"] for r in result] == [topic]
        assert 0.2 <= float(result[0]["value"][1]) <= 0.3  # 20 of 80 records per round

        def pending() -> list[dict]:
            return [a for a in prometheus.api("alerts")["alerts"]
                    if a["labels"]["alertname"] == "StreamvganDeadLetterRateHigh"]

        (alert,) = wait_until(pending, "the dead-letter alert to go pending", timeout_s=20)
        assert alert["state"] == "pending"  # `for: 5m` keeps it from firing in a test
        assert alert["labels"]["topic"] == topic and alert["labels"]["severity"] == "warning"

        # Every rule evaluates without error against the real series.
        def evaluated() -> list[dict]:
            rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else []

        rules = wait_until(evaluated, "every rule to be evaluated", timeout_s=10)
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        assert {r["name"]: r["health"] for r in rules} == {r["name"]: "ok" for r in rules}
        # Round 1 ended before Prometheus started, so the latency histogram only shows a rate
        # once round 2's acknowledged outputs have been scraped (NaN until then).
        p99 = ("histogram_quantile(0.99, sum by (le) "
               "(rate(streamvgan_pipeline_latency_seconds_bucket[1m])))")

        def latency() -> float:
            result = prometheus.query(p99)
            value = float(result[0]["value"][1]) if result else float("nan")
            return value if value == value else 0.0  # NaN -> keep waiting

        assert 0 < wait_until(latency, "a latency rate from round 2", timeout_s=20) < 10
    finally:
        prometheus.stop()
