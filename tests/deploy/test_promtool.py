"""`promtool` (Debian package `prometheus`, installed by `make system-deps`) on the shipped
Prometheus files: config and rules syntax, and the alert rules' unit tests
(tests/deploy/alerts_test.yml)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from promql_names import ALERTS, PROMETHEUS_CONFIG, REPO

pytestmark = pytest.mark.slow  # runs an external tool, not part of the fast lane

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's 'prometheus' package (`make system-deps`)",
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


@needs_promtool
def test_prometheus_config_is_valid_and_finds_the_rules():
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


@needs_promtool
def test_alert_rules_are_valid():
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout + result.stderr


@needs_promtool
def test_alert_rules_fire_on_the_cases_they_are_for():
    """Each alert fires on a series made for it and stays quiet on a near miss."""
    result = _promtool("test", "rules", "tests/deploy/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path):
    """The checks above would catch a mistake: promtool fails on an unknown function."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n- name: x\n  rules:\n  - alert: X\n"
                   "    expr: rat(streamvgan_engine_streams[5m]) > 1\n")
    result = _promtool("check", "rules", str(bad))
    assert result.returncode != 0
    assert "rat" in result.stdout + result.stderr
