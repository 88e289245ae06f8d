"""The deployment files parse and agree with the code: the same image, ports, env var names
(checked against the service's Settings fields, and validated by Settings itself), topics,
groups and probes in the Dockerfile, docker-compose.yml and the Kubernetes manifests.

No Docker engine or Kubernetes cluster runs where these tests run; this is what can be checked
without one.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from promql_names import ALERTS, DEPLOY, PROMETHEUS_CONFIG, REPO

from streamvgan._version import __version__
from streamvgan.service.settings import CONFIG_ENV, ENV_PREFIX, Settings

K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
# The project's version (a regex rather than tomllib, which Python 3.10 lacks).
VERSION = __version__  # the one place the version is written: streamvgan/_version.py
IMAGE = f"streamvgan:{VERSION}"
SETTINGS_ENV = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_ENV}
DEFAULTS = Settings()

# Shutdown after SIGTERM, in seconds (see the comment in deploy/k8s/deployment.yaml): the final
# commit, a checkpoint at max_streams on a slow volume, waiting for a running fine-tune
# (BackgroundFineTuner.stop(timeout=5.0) in app.py) and closing the producer (timeout=10).
SHUTDOWN_BUDGET_S = {"commit": 5, "checkpoint": 30, "fine_tune": 5, "producer_close": 10}


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s() -> dict[str, dict]:
    docs: dict[str, dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _load_all(path):
            assert doc["kind"] not in docs, f"two {doc['kind']} objects"
            docs[doc["kind"]] = doc
    return docs


def _streamvgan_env(mapping: dict) -> dict[str, str]:
    return {k: str(v) for k, v in mapping.items() if k.startswith(ENV_PREFIX)}


def _check_env(env: dict[str, str], where: str) -> Settings:
    """Every STREAMVGAN_* name is a setting, and together they form valid settings."""
    unknown = sorted(set(env) - SETTINGS_ENV)
    assert not unknown, f"{where}: {unknown} are not settings of streamvgan serve"
    return Settings.resolve(env=env)


# -- every file parses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(p.relative_to(REPO).as_posix() for p in DEPLOY.rglob("*.y*ml")),
)
def test_yaml_parses(path):
    docs = _load_all(REPO / path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


# -- Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_serve_as_non_root_with_a_healthcheck():
    ins = _dockerfile()
    kinds = [k for k, _ in ins]
    assert kinds.count("FROM") == 2 and ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    assert all(arg.startswith("${BASE_IMAGE}") for k, arg in ins if k == "FROM")
    assert dict(ins)["ENTRYPOINT"] == '["streamvgan", "serve"]'
    user = [arg for k, arg in ins if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    final_stage = [i for i, k in enumerate(kinds) if k == "FROM"][1]
    runtime = ins[final_stage:]
    assert kinds.index("USER") > final_stage, "USER must be set in the final stage"
    expose = [arg for k, arg in runtime if k == "EXPOSE"]
    assert expose == [str(DEFAULTS.metrics_port)]
    health = dict(runtime)["HEALTHCHECK"]
    assert "/healthz" in health and "STREAMVGAN_METRICS_PORT" in health
    env_text = " ".join(a for k, a in runtime if k == "ENV")
    env = dict(re.findall(r"\b(STREAMVGAN_\w+)=(\S+)", env_text))
    assert env and set(env) <= SETTINGS_ENV
    assert int(env["STREAMVGAN_METRICS_PORT"]) == DEFAULTS.metrics_port


def test_dockerfile_installs_the_package_with_its_pins_and_names_no_host():
    ins = _dockerfile()
    runs = " ".join(arg for k, arg in ins if k == "RUN")
    assert "pip install ." in runs and "--index-url" not in runs
    urls = re.findall(r"[a-z]+://[^\s'\"]+", DOCKERFILE.read_text())
    assert all(u.startswith("http://127.0.0.1:") for u in urls), urls
    for k, arg in ins:
        if k == "COPY" and "--from" not in arg:
            sources = arg.split()[:-1]
            assert any((REPO / s.rstrip("*")).exists() for s in sources), arg
    assert (DEPLOY / "Dockerfile.dockerignore").is_file()


# -- docker compose --------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_kafka_in_kraft_mode_with_no_rebalance_delay():
    kafka = _compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert not any("ZOOKEEPER" in k for k in env)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")


def test_compose_service_matches_the_code():
    services = _compose()["services"]
    app = services["streamvgan"]
    assert app["image"] == IMAGE
    assert (REPO / "deploy" / ".." / app["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve()
    settings = _check_env(_streamvgan_env(app["environment"]), "compose streamvgan")
    assert settings.bootstrap_servers == "kafka:9092"
    assert f"{settings.metrics_port}:{settings.metrics_port}" in app["ports"]
    # the checkpoint directory lies on a named volume
    mounts = [v.split(":")[1] for v in app["volumes"]]
    assert any(settings.checkpoint_dir.startswith(m) for m in mounts)
    assert int(app["stop_grace_period"].rstrip("s")) >= sum(SHUTDOWN_BUDGET_S.values())
    # the input topic is created with the partitions the service shares out
    init = services["kafka-init"]["command"]
    assert init[init.index("--topic") + 1] == settings.input_topic
    # the replay producer writes to the topic the service reads
    replay = services["replay"]
    assert replay["image"] == IMAGE
    _check_env(_streamvgan_env(replay["environment"]), "compose replay")
    script = replay["command"][0]
    topics = set(re.findall(r"--topic (\S+)", script))
    assert topics == {settings.input_topic}
    assert replay["healthcheck"] == {"disable": True}


def test_compose_prometheus_and_grafana_mount_the_shipped_files():
    services = _compose()["services"]
    prom = services["prometheus"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in prom["volumes"] if v.startswith("./"))
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    container_path = config_arg.split("=", 1)[1]
    local = DEPLOY / "prometheus" / Path(container_path).relative_to(mounts["./prometheus"])
    assert local.samefile(PROMETHEUS_CONFIG)
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert all((PROMETHEUS_CONFIG.parent / f).is_file() for f in config["rule_files"])
    assert (PROMETHEUS_CONFIG.parent / config["rule_files"][0]).samefile(ALERTS)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streamvgan")
    assert job["static_configs"][0]["targets"] == [f"streamvgan:{DEFAULTS.metrics_port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"

    grafana = services["grafana"]
    gmounts = dict(v.rsplit(":", 2)[:2] for v in grafana["volumes"] if v.startswith("./"))
    provisioning = DEPLOY / gmounts["./grafana/provisioning"].replace(
        "/etc/grafana/provisioning", "grafana/provisioning")
    assert provisioning.is_dir()
    provider = yaml.safe_load((provisioning / "dashboards" / "streamvgan.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == gmounts["./grafana/dashboards"]
    assert (DEPLOY / "grafana" / "dashboards" / "streamvgan.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == gmounts["./grafana/dashboards"] + "/streamvgan.json"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    url = datasource["datasources"][0]["url"]
    assert url == "http://prometheus:" + prom["ports"][0].split(":")[1]


# -- Kubernetes ------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_the_image():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    (image,) = kustomization["images"]
    assert f"{image['name']}:{image['newTag']}" == IMAGE


def test_k8s_kinds_and_configmap_settings():
    docs = _k8s()
    assert set(docs) == {"Namespace", "ConfigMap", "Deployment", "Service", "PodMonitor",
                         "PrometheusRule", "ScaledObject"}
    settings = _check_env(docs["ConfigMap"]["data"], "k8s ConfigMap")
    assert all(isinstance(v, str) for v in docs["ConfigMap"]["data"].values())
    assert settings.metrics_port == DEFAULTS.metrics_port


def test_k8s_deployment_probes_ports_resources_and_grace_period():
    docs = _k8s()
    settings = Settings.resolve(env=docs["ConfigMap"]["data"])
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert {"configMapRef": {"name": docs["ConfigMap"]["metadata"]["name"]}} in container["envFrom"]
    env_names = {e["name"] for e in container.get("env", []) if e["name"].startswith(ENV_PREFIX)}
    assert env_names <= SETTINGS_ENV
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": settings.metrics_port, "protocol": "TCP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    assert container["resources"]["limits"]["memory"]
    grace = pod["terminationGracePeriodSeconds"]
    budget = dict(SHUTDOWN_BUDGET_S, commit=settings.commit_interval_s)
    assert grace > sum(budget.values()), (grace, budget)
    # never more members than partitions during a roll-out (see the manifest's comment)
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # the pod runs as the image's user, and the checkpoint directory is on a writable volume
    user = next(a for k, a in _dockerfile() if k == "USER").split(":")[0]
    security = pod["securityContext"]
    assert str(security["runAsUser"]) == user and security["runAsNonRoot"] is True
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(settings.checkpoint_dir.startswith(m + "/") for m in mounts)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in mounts
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_service_and_podmonitor_point_at_the_metrics_port():
    docs = _k8s()
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = docs["Service"]["spec"]
    assert service["selector"].items() <= pod_labels.items()
    (port,) = service["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == DEFAULTS.metrics_port
    assert service["publishNotReadyAddresses"] is True
    monitor = docs["PodMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_k8s_prometheusrule_carries_the_same_rules_as_alerts_yml():
    rule = _k8s()["PrometheusRule"]
    expected = yaml.safe_load(ALERTS.read_text())
    assert rule["spec"] == expected, (
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/alerts.yml; rewrite it "
        "with `python tests/deploy/test_manifests.py --write-prometheusrule`"
    )


def test_k8s_scaledobject_scales_on_lag_up_to_the_partition_count():
    docs = _k8s()
    settings = Settings.resolve(env=docs["ConfigMap"]["data"])
    scaled = docs["ScaledObject"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    partitions = int(scaled["metadata"]["annotations"]["streamvgan.io/input-partitions"])
    assert spec["maxReplicaCount"] == partitions >= spec["minReplicaCount"] >= 1
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["topic"] == settings.input_topic
    assert meta["consumerGroup"] == settings.group_id
    assert meta["bootstrapServers"] == settings.bootstrap_servers
    assert meta["offsetResetPolicy"] == settings.auto_offset_reset
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0


def _write_prometheusrule() -> None:  # pragma: no cover - a maintenance helper
    """Rewrite deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yml."""
    path = K8S / "prometheusrule.yaml"
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    doc = _load_all(path)[0]
    doc["spec"] = yaml.safe_load(ALERTS.read_text())

    class _Literal(str):
        pass

    def literal(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", text,
                                       style="|" if "\n" in text else None)

    def mark(obj: object) -> object:
        if isinstance(obj, dict):
            return {k: mark(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [mark(v) for v in obj]
        return _Literal(obj) if isinstance(obj, str) else obj

    yaml.SafeDumper.add_representer(_Literal, literal)
    path.write_text(header + yaml.safe_dump(mark(doc), sort_keys=False, width=100))


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--write-prometheusrule"]:
        _write_prometheusrule()
    else:
        print(f"usage: python {shlex.quote(sys.argv[0])} --write-prometheusrule")
