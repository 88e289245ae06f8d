"""Three `streamvgan serve` replicas in one consumer group, weights from the model topic:
partitions are split, a SIGTERM and a kill -9 each move partitions to the others, every valid
input is scored at least once, a moved stream continues with the state it had (its scores equal
a single engine's over the same input and model versions), and a newly published model version
reaches every replica (score records and /metrics).

One scenario runs once for the module; the tests check its parts.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.service.clients import ensure_topics, make_producer
from streamvgan.service.model_topic import model_topic, publish
from waiting import wait_until

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6
STREAMS = [f"host-{i}/cpu" for i in range(12)]
PER_PHASE = 25
ENGINE = {"init": "random", "hidden_size": 8, "window": 32, "burn_in": 8, "warmup_events": 10**9}

CONFIG = """
bootstrap_servers = "{bootstrap}"
input_topic = "{topic}"
group_id = "{group}"
kafka_client = "{client}"
model_source = "topic"
commit_interval_s = 0.5
poll_max_records = 50
metrics_port = {port}
metrics_host = "127.0.0.1"
forecast_every = 0
continuation_every = 0
[engine]
init = "random"
hidden_size = 8
window = 32
burn_in = 8
warmup_events = 1000000000
"""


def _value(stream: str, i: int) -> float:
    k = STREAMS.index(stream)
    return 10 * k + math.sin(i / 3 + k) + (4.0 if i == 40 and k % 3 == 0 else 0.0)


def _records(phase: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(phase * PER_PHASE, (phase + 1) * PER_PHASE):
        for s in STREAMS:
            out.append((s.encode(), json.dumps({"stream": s, "ts": i, "value": _value(s, i)}).encode()))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metric(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


class Replica:
    def __init__(self, name: str, config_text: str, tmp: Path, port: int) -> None:
        self.name, self.port = name, port
        self.config = tmp / f"{name}.toml"
        self.config.write_text(config_text)
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamvgan.cli", "serve", "--config", str(self.config)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),  # noqa: SIM115
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def assigned(self) -> list[set[int]]:
        return [set(map(int, re.findall(r"\[(\d+)\]", m))) for m in re.findall(r"partitions assigned: (.*)", self.text())]


def _engine() -> StreamEngine:
    return StreamEngine(EngineConfig.from_params(**ENGINE), seed=0)


@pytest.fixture(scope="module")
def scenario(module_kafka_client, kafka_session, tmp_path_factory):
    from test_process import _Watcher  # the same bounded reader of score records

    kafka = kafka_session
    tmp = tmp_path_factory.mktemp("scaleout")
    topic = kafka.topic("scale-in", partitions=PARTITIONS)
    group = kafka.group("scale")
    ensure_topics(kafka.bootstrap_servers, [f"{topic}.scores"], partitions=PARTITIONS)
    models = model_topic(group, topic)
    ensure_topics(kafka.bootstrap_servers, [models], partitions=1)

    # the trainer's part, done here: two model versions trained on the same kind of data
    trainer = _engine()
    for i in range(200):
        trainer.process([Event(s, {"value": _value(s, i + 1000)}) for s in STREAMS])
    trainer.fine_tune(force=True, steps=20)
    v1 = trainer.export_weights()
    trainer.fine_tune(force=True, steps=20)
    v2 = trainer.export_weights()
    producer = make_producer(kafka.bootstrap_servers)
    publish(producer, models, v1, version=1)

    watcher = _Watcher(kafka.bootstrap_servers, f"{topic}.scores")
    replicas = []
    facts = {"topic": topic, "v1": v1, "v2": v2, "sent": []}
    try:
        for name in ("r0", "r1", "r2"):
            port = _free_port()
            text = CONFIG.format(bootstrap=kafka.bootstrap_servers, topic=topic, group=group,
                                 port=port, client=module_kafka_client)
            replicas.append(Replica(name, text, tmp, port))
        # all three joined and split the six partitions
        def split() -> bool:
            latest = [r.assigned()[-1] if r.assigned() else set() for r in replicas]
            return all(latest) and sorted(p for s in latest for p in s) == list(range(PARTITIONS))

        wait_until(split, "three replicas sharing the partitions", 120)
        facts["initial_assignment"] = [r.assigned()[-1] for r in replicas]

        def send(phase: int) -> None:
            records = _records(phase)
            kafka.produce(topic, records)
            facts["sent"] += records
            keys = {(json.loads(v)["stream"], json.loads(v)["ts"]) for _, v in facts["sent"]}
            wait_until(lambda: keys <= {(r["stream"], r["ts"]) for r in watcher.records},
                       f"phase {phase} scored", 120, on_poll=watcher.poll)

        send(0)
        # a new model version reaches every replica
        publish(producer, models, v2, version=2)
        wait_until(lambda: all(_metric(r.port, "streamvgan_model_version") == 2.0 for r in replicas),
                   "model_version 2 on every replica's /metrics", 60)
        facts["model_version_metrics"] = [_metric(r.port, "streamvgan_model_version") for r in replicas]
        # graceful stop of r0: its partitions move with their state
        replicas[0].proc.send_signal(signal.SIGTERM)
        facts["term_rc"] = replicas[0].proc.wait(60)
        send(1)
        # crash of r1: its partitions move to r2 after the session timeout
        replicas[1].proc.send_signal(signal.SIGKILL)
        facts["kill_rc"] = replicas[1].proc.wait(10)
        send(2)
        facts["final_assignment_r2"] = replicas[2].assigned()[-1]
        replicas[2].proc.send_signal(signal.SIGTERM)
        facts["term_rc_r2"] = replicas[2].proc.wait(60)
        for _ in range(5):
            watcher.poll()
        facts["scores"] = list(watcher.records)
        facts["logs"] = [r.text() for r in replicas]
        yield facts
    finally:
        producer.close()
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait(10)
        watcher.close()


def test_partitions_are_split_and_move_on_sigterm_and_kill_9(scenario):
    first = scenario["initial_assignment"]
    assert all(first) and sum(len(a) for a in first) == PARTITIONS  # disjoint, all covered
    assert scenario["term_rc"] == 0 and scenario["kill_rc"] == -signal.SIGKILL
    assert scenario["final_assignment_r2"] == set(range(PARTITIONS))
    assert scenario["term_rc_r2"] == 0


def test_every_valid_input_is_scored_at_least_once(scenario):
    scored = {(r["stream"], r["ts"]) for r in scenario["scores"]}
    for _, value in scenario["sent"]:
        data = json.loads(value)
        assert (data["stream"], data["ts"]) in scored


def test_moved_streams_continue_with_their_state(scenario):
    """Every score record equals what one engine computes over the same input, switching to
    version 2 at the same point: streams restored from the changelog on another replica (and
    records re-scored after the kill -9) continue exactly from the state they had."""
    reference = _engine()
    reference.import_weights(scenario["v1"], version=1)
    expected: dict[tuple[str, int], dict] = {}
    for phase in range(3):
        if phase == 1:
            reference.import_weights(scenario["v2"], version=2)
        for i in range(phase * PER_PHASE, (phase + 1) * PER_PHASE):
            for score in reference.process([Event(s, {"value": _value(s, i)}) for s in STREAMS]):
                expected[(score.stream, i)] = {"raw": score.raw, "model_version": score.model_version,
                                               **score.components}
    by_key = defaultdict(list)
    for record in scenario["scores"]:
        by_key[(record["stream"], record["ts"])].append(record)
    moved = [s for s in STREAMS]  # r0's and r1's streams moved; all are compared
    for stream in moved:
        for i in range(3 * PER_PHASE):
            for record in by_key[(stream, i)]:
                want = expected[(stream, i)]
                assert record["model_version"] == want["model_version"]
                assert record["raw"] == pytest.approx(want["raw"], abs=1e-3), (stream, i)
                assert record["components"]["surprise"] == pytest.approx(want["surprise"], rel=1e-3, abs=1e-3)
    restored = sum(int(n) for log in scenario["logs"] for n in re.findall(r"restored (\d+) stream states", log))
    assert restored >= len(STREAMS) // 3  # at least r0's streams came back from the changelog


def test_new_model_version_reaches_every_replica(scenario):
    assert scenario["model_version_metrics"] == [2.0, 2.0, 2.0]
    late = [r for r in scenario["scores"] if r["ts"] >= PER_PHASE]
    assert late and {r["model_version"] for r in late} == {2}
