"""`streamvgan serve` as a real process: kill -9 mid-stream and restart (every valid input
scored at least once, state resumed from the checkpoint), then SIGTERM (exit code 0,
offsets committed, checkpoint written).

One scenario runs once for the module; the tests check its parts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from streamvgan.service.checkpoints import latest_checkpoint, read_service_info

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
STREAMS = ["web-1/latency", "cache/hits", "db/cpu"]  # keys on both partitions
PART_A, PART_B = 70, 70  # events per stream before and around the crash
PARTITIONS = 2

# Cheap, quick fits so that the model version moves within seconds.
CONFIG = """
bootstrap_servers = "{bootstrap}"
input_topic = "{topic}"
group_id = "{group}"
kafka_client = "{client}"
checkpoint_dir = "{checkpoints}"
checkpoint_interval_s = 1.0
commit_interval_s = 0.5
poll_max_records = 20
metrics_port = -1
forecast_every = 5
continuation_every = 0
[engine]
warmup_events = 60
window = 32
burn_in = 8
first_fit_steps = 2
fit_steps = 1
batch_size = 4
fit_every = 60
"""


def _events(start, stop):
    return [
        (s.encode(), json.dumps({"stream": s, "ts": 1_000 * i, "value": (i % 7) + 10 * k}).encode())
        for i in range(start, stop)
        for k, s in enumerate(STREAMS)
    ]


class _Watcher:
    """Accumulates the score records (assign(), no group) while the service runs."""

    def __init__(self, bootstrap_servers, topic):
        from kafka import TopicPartition

        from streamvgan.service.clients import make_consumer

        self.consumer = make_consumer(bootstrap_servers, client_id="tests-watch")
        deadline = time.monotonic() + 30
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = self.consumer.partitions_for_topic(topic)
            time.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records = []

    def poll(self):
        for batch in self.consumer.poll(timeout_ms=200).values():
            self.records.extend(json.loads(r.value) for r in batch)

    def wait(self, predicate, timeout_s, what, process=None):
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            if process is not None and process.poll() is not None:
                raise AssertionError(f"service exited ({process.returncode}) before {what}")
            self.poll()

    def close(self):
        self.consumer.close()


def _serve(config_path, log_path):
    return subprocess.Popen(
        [sys.executable, "-m", "streamvgan.cli", "serve", "--config", str(config_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "wb"),  # noqa: SIM115 (closed with the process)
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def scenario(module_kafka_client, kafka_session, tmp_path_factory):
    kafka = kafka_session
    tmp = tmp_path_factory.mktemp("serve")
    topic = kafka.topic("proc-in", partitions=PARTITIONS)
    group = kafka.group("proc")
    checkpoints = tmp / "checkpoints"
    config = tmp / "streamvgan.toml"
    config.write_text(CONFIG.format(bootstrap=kafka.bootstrap_servers, topic=topic, group=group,
                                    checkpoints=checkpoints, client=module_kafka_client))
    from streamvgan.service.clients import ensure_topics

    ensure_topics(kafka.bootstrap_servers, [f"{topic}.scores"], partitions=PARTITIONS)
    part_a, part_b = _events(0, PART_A), _events(PART_A, PART_A + PART_B)
    kafka.produce(topic, part_a)
    watcher = _Watcher(kafka.bootstrap_servers, f"{topic}.scores")
    facts = {"topic": topic, "group": group, "checkpoints": checkpoints,
             "sent": part_a + part_b, "kafka": kafka}
    first = _serve(config, tmp / "first.log")
    second = None
    try:
        # 1. the first process scores part A and checkpoints a fitted model
        watcher.wait(lambda: len(watcher.records) >= len(part_a), 120, "part A scored", first)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = read_service_info(checkpoints) if latest_checkpoint(checkpoints) else None
            if info and info["model_version"] >= 1:
                break
            time.sleep(0.2)
        # 2. part B arrives over ~3 s; kill -9 after ~1 s, in the middle of it
        def feed():
            for i in range(0, len(part_b), 15):
                kafka.produce(topic, part_b[i:i + 15])
                time.sleep(0.25)

        feeder = threading.Thread(target=feed)
        feeder.start()
        time.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        facts["kill_rc"] = first.wait(10)
        facts["scored_before_kill"] = len(watcher.records)
        feeder.join(30)
        facts["checkpoint_at_kill"] = read_service_info(checkpoints)
        # 3. restart: it must catch up on everything
        second = _serve(config, tmp / "second.log")
        sent_keys = {(json.loads(v)["stream"], json.loads(v)["ts"]) for _, v in facts["sent"]}
        watcher.wait(
            lambda: sent_keys <= {(r["stream"], r["ts"]) for r in watcher.records},
            120, "every input scored after the restart", second,
        )
        # 4. SIGTERM: graceful stop
        latest_before = (checkpoints / "LATEST").read_text()
        second.send_signal(signal.SIGTERM)
        facts["term_rc"] = second.wait(60)
        facts["latest_before_term"] = latest_before
        watcher.wait(lambda: True, 1, "")
        for _ in range(10):
            watcher.poll()
        facts["scores"] = list(watcher.records)
        facts["second_log"] = (tmp / "second.log").read_text()
        facts["checkpoint_at_exit"] = read_service_info(checkpoints)
        facts["latest_after_term"] = (checkpoints / "LATEST").read_text()
        yield facts
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        watcher.close()


def test_kill_9_then_restart_scores_every_valid_input_at_least_once(scenario):
    assert scenario["kill_rc"] == -signal.SIGKILL
    assert scenario["scored_before_kill"] < len(scenario["sent"])  # it really died mid-stream
    scored = Counter((r["stream"], r["ts"]) for r in scenario["scores"])
    for _, value in scenario["sent"]:
        data = json.loads(value)
        assert scored[(data["stream"], data["ts"])] >= 1, data


def test_restart_resumes_state_from_the_checkpoint(scenario):
    at_kill = scenario["checkpoint_at_kill"]
    assert at_kill is not None and at_kill["events_seen"] > 0 and at_kill["model_version"] >= 1
    log = scenario["second_log"]
    loaded = re.search(r"loaded checkpoint .* model_version=(\d+) streams=(\d+) "
                       r"events_seen=(\d+)", log)
    assert loaded, log[-2000:]
    assert int(loaded.group(1)) == at_kill["model_version"]
    assert int(loaded.group(2)) == len(STREAMS)
    assert int(loaded.group(3)) == at_kill["events_seen"]
    # the engine went on from the checkpoint: its final count adds what the restart scored
    scored_by_second = int(re.search(r"stopped: consumed=\d+ scored=(\d+)", log).group(1))
    final = scenario["checkpoint_at_exit"]
    assert final["events_seen"] == at_kill["events_seen"] + scored_by_second
    assert scenario["checkpoint_at_exit"]["model_version"] >= at_kill["model_version"]


def test_sigterm_exits_0_with_offsets_committed_and_a_checkpoint(scenario):
    assert scenario["term_rc"] == 0
    per_partition = Counter(r.partition for r in scenario["kafka"].read(
        scenario["topic"], len(scenario["sent"])))
    committed = scenario["kafka"].committed(scenario["topic"], scenario["group"], PARTITIONS)
    assert min(per_partition.values()) > 0 and len(per_partition) == PARTITIONS
    assert committed == {p: per_partition[p] for p in range(PARTITIONS)}
    assert scenario["latest_after_term"] != scenario["latest_before_term"]
    assert "leaving" in scenario["second_log"].lower() or "revoked" in scenario["second_log"]
