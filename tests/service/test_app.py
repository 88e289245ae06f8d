"""The service loop against a real broker over TCP: every valid event scored exactly once,
every malformed record dead-lettered with its original bytes and reason, metrics over HTTP.

One Application runs once for the module (one group join) on a mix of valid and malformed
records; the tests below check different parts of what it wrote.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections import Counter

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from streamvgan.schemas import load_schema
from streamvgan.service.app import Application
from streamvgan.service.settings import Settings
from streamvgan.service.wire import H_OFFSET, H_PARTITION, H_REASON, H_TOPIC

pytestmark = pytest.mark.kafka

N_STREAMS = 6
PER_STREAM = 40
PARTITIONS = 3
# No fine-tune in this module: the loop, not the model, is under test.
ENGINE = {"warmup_events": 10**9}

MALFORMED = [
    # (key, value, reason); keyed like valid streams so they sit between valid neighbours
    (b"s1", b"\xff\xfe{}", "invalid_utf8"),
    (b"s2", b'{"stream": "s2", "ts": 5, "value": 1', "invalid_json"),
    (b"s3", b"[1, 2, 3]", "not_an_object"),
    (b"s4", b'{"stream": "s4", "ts": 5, "value": "high"}', "schema"),
    (b"s5", b'{"stream": "s5", "ts": 5, "value": NaN}', "non_finite"),
    (None, b'{"ts": 5, "value": 1.0}', "missing_stream"),
    (b"s0", b'{"stream": "s0", "ts": 5, "values": {"a": 1.0, "b": 2.0}}', "engine_error"),
    # issue 11's poison pills: each killed the service before (OverflowError / ValueError in
    # decoding, or NaN scores forever after 1e39); now dead-lettered, the stream goes on
    (b"s1", b'{"stream": "s1", "ts": 5, "value": 1' + b"0" * 400 + b"}", "out_of_range"),
    (b"s2", b'{"stream": "s2", "ts": 5, "value": 1' + b"0" * 4400 + b"}", "out_of_range"),
    (b"s3", b'{"stream": "s3", "ts": 5, "values": {"v": 1' + b"0" * 400 + b"}}", "out_of_range"),
    (b"s4", b'{"stream": "s4", "ts": 5, "value": 1e39}', "out_of_range"),
]


def _valid_records():
    records = []
    for i in range(PER_STREAM):
        for k in range(N_STREAMS):
            stream = f"s{k}"
            # half the streams carry ISO-8601 timestamps, half epoch milliseconds
            ts = 1_700_000_000_000 + 60_000 * i if k % 2 else f"2024-11-29T08:{i:02d}:00Z"
            value = {"stream": stream, "ts": ts, "value": math.sin(i / 5 + k) * (k + 1)}
            records.append((stream.encode(), json.dumps(value).encode()))
    return records


@pytest.fixture(scope="module")
def run(module_kafka_client, kafka_broker, kafka_session):
    """Produce the mix, run the service until it consumed everything, scrape, stop."""
    kafka = kafka_session
    topic = kafka.topic("app-in", partitions=PARTITIONS)
    valid = _valid_records()
    bad = [(key, value) for key, value, _ in MALFORMED]
    mixed = valid[:100] + bad[:4] + valid[100:160] + bad[4:] + valid[160:]
    kafka.produce(topic, mixed)
    settings = Settings(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        input_topic=topic,
        group_id=kafka.group("app"),
        kafka_client=module_kafka_client,
        metrics_host="127.0.0.1",
        metrics_port=0,
        forecast_every=10,
        continuation_every=20,
        continuation_samples=3,
        poll_max_records=50,
        commit_interval_s=1.0,
        engine_params=ENGINE,
    )
    registry = CollectorRegistry()
    app = Application(settings, registry=registry).start()
    assert app.wait_started(30)
    deadline = time.monotonic() + 60
    while app.stats.consumed < len(mixed) and time.monotonic() < deadline:
        time.sleep(0.1)
    base = f"http://127.0.0.1:{app.metrics_port}"
    scraped = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    health = urllib.request.urlopen(base + "/healthz", timeout=5).status
    ready = urllib.request.urlopen(base + "/readyz", timeout=5).status
    app.stop()
    exit_code = app.join(60)
    outputs = {
        "scores": kafka.read(settings.scores_topic, len(valid), settle_s=1.0),
        "forecasts": kafka.read(settings.forecasts_topic, N_STREAMS, settle_s=0.5),
        "continuations": kafka.read(settings.continuations_topic, N_STREAMS, settle_s=0.5),
        "dlq": kafka.read(settings.dlq_topic, len(MALFORMED), settle_s=0.5),
        "input": kafka.read(topic, len(mixed)),
    }
    return {
        "app": app, "settings": settings, "valid": valid, "mixed": mixed, "outputs": outputs,
        "scraped": scraped, "health": health, "ready": ready, "exit_code": exit_code,
        "registry": registry, "kafka": kafka,
    }


def test_every_valid_event_has_exactly_one_score_with_its_stream_and_ts(run):
    assert run["exit_code"] == 0
    sent = Counter()
    for key, value in run["valid"]:
        data = json.loads(value)
        sent[(data["stream"], json.dumps(data["ts"]))] += 1
    scores = run["outputs"]["scores"]
    got = Counter((r.json()["stream"], json.dumps(r.json()["ts"])) for r in scores)
    assert got == sent  # exactly once each, stream and ts echoed unchanged (int or string)
    for r in scores:
        data = r.json()
        assert r.key == data["stream"].encode()
        assert data["schema_version"] == 1
        assert 0.0 <= data["score"] <= 1.0
        assert set(data["components"]) == {"surprise", "reconstruction", "critic", "jump", "level"}
        assert data["model_version"] == 1 and data["anomaly"] == (data["score"] >= 0.99)


def test_forecasts_and_continuations_per_stream(run):
    ts_of = {}
    for _, value in run["valid"]:
        data = json.loads(value)
        ts_of.setdefault(data["stream"], set()).add(json.dumps(data["ts"]))
    forecasts = [r.json() for r in run["outputs"]["forecasts"]]
    by_stream = Counter(f["stream"] for f in forecasts)
    # every 10 events of a stream, at most one per poll: between 1 and 4 of 40 events
    assert set(by_stream) == set(ts_of) and all(1 <= n <= 4 for n in by_stream.values())
    for f in forecasts:
        assert json.dumps(f["ts"]) in ts_of[f["stream"]]
        assert f["horizon"] == 12 and f["fields"] == ["value"]
        assert set(f["quantiles"]) == {"0.1", "0.5", "0.9"}
        lo, mid, hi = (f["quantiles"][q]["value"] for q in ("0.1", "0.5", "0.9"))
        assert all(a <= b <= c for a, b, c in zip(lo, mid, hi))
    continuations = [r.json() for r in run["outputs"]["continuations"]]
    assert set(c["stream"] for c in continuations) == set(ts_of)
    assert all(1 <= n <= 2 for n in Counter(c["stream"] for c in continuations).values())
    for c in continuations:
        assert c["n_samples"] == 3 and len(c["samples"]["value"]) == 3
        assert all(len(path) == 12 for path in c["samples"]["value"])


def test_each_malformed_record_is_dead_lettered_with_original_bytes_and_reason(run):
    dlq = run["outputs"]["dlq"]
    assert len(dlq) == len(MALFORMED)
    source = {(r.partition, r.offset): r for r in run["outputs"]["input"]}
    by_value = {r.value: r for r in dlq}
    for key, value, reason in MALFORMED:
        letter = by_value[value]  # the original value bytes, unchanged
        headers = dict(letter.headers)
        assert letter.key == key
        assert headers[H_REASON].decode() == reason
        assert headers[H_TOPIC].decode() == run["settings"].input_topic
        original = source[(int(headers[H_PARTITION]), int(headers[H_OFFSET]))]
        assert original.value == value and original.key == key


def test_every_record_written_follows_its_published_schema(run):
    """What a downstream consumer reads from each output topic validates against the JSON
    Schemas in streamvgan/schemas/ (dead letters: their headers, decoded as UTF-8)."""
    for topic, name in [("scores", "score"), ("forecasts", "forecast"),
                        ("continuations", "continuation")]:
        validator = jsonschema.Draft202012Validator(load_schema(name))
        assert run["outputs"][topic]
        for record in run["outputs"][topic]:
            validator.validate(record.json())
    validator = jsonschema.Draft202012Validator(load_schema("dead_letter_headers"))
    for record in run["outputs"]["dlq"]:
        validator.validate({k: v.decode("utf-8") for k, v in record.headers})


def test_metrics_scraped_over_http_match_what_was_sent(run):
    text = run["scraped"]
    s = run["settings"]
    n_valid, n_bad = len(run["valid"]), len(MALFORMED)

    def sample(name, **labels):
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        line = f"{name}{{{want}}}" if labels else name
        values = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(line + " ")]
        assert values, f"{line} not in /metrics"
        return values[0]

    consumed = sample("streamvgan_consumer_records_consumed_total", topic=s.input_topic)
    assert consumed == n_valid + n_bad
    assert sample("streamvgan_producer_records_produced_total", topic=s.scores_topic) == n_valid
    assert sample("streamvgan_producer_records_produced_total", topic=s.dlq_topic) == n_bad
    for reason, n in Counter(reason for _, _, reason in MALFORMED).items():
        assert sample("streamvgan_consumer_records_dead_lettered_total",
                      reason=reason, topic=s.input_topic) == n
    assert sample("streamvgan_scores_anomaly_score_count") == n_valid
    assert sample("streamvgan_pipeline_latency_seconds_count") == n_valid + n_bad
    assert sample("streamvgan_pipeline_batch_size_records_sum") == n_valid + n_bad
    assert sample("streamvgan_engine_streams") == N_STREAMS
    assert sample("streamvgan_service_ready") == 1
    assert sample("streamvgan_model_version") == 1  # the shipped weights, not yet fine-tuned
    assert "streamvgan_consumer_lag_records" in text
    assert run["health"] == 200 and run["ready"] == 200
    forecasts = len(run["outputs"]["forecasts"])
    produced = sample("streamvgan_producer_records_produced_total", topic=s.forecasts_topic)
    assert produced == forecasts


def test_offsets_committed_after_shutdown(run):
    per_partition = Counter(r.partition for r in run["outputs"]["input"])
    committed = run["kafka"].committed(run["settings"].input_topic, run["settings"].group_id,
                                       partitions=PARTITIONS)
    assert committed == {p: per_partition.get(p) for p in range(PARTITIONS)}
    assert run["registry"].get_sample_value("streamvgan_service_ready") == 0


def test_readyz_is_503_before_partitions_are_assigned(kafka_broker):
    app = Application(
        Settings(bootstrap_servers=kafka_broker.bootstrap_servers, metrics_port=-1,
                 engine_params=ENGINE),
        registry=CollectorRegistry(),
    )
    assert app.ready is False


def test_revoked_partitions_are_committed_before_they_move(kafka_session, kafka_broker,
                                                           kafka_client):
    """A second replica joins: the first commits what it acknowledged when its partitions are
    revoked (its periodic commit is far away), so nothing is scored twice."""
    kafka = kafka_session
    topic = kafka.topic("rebalance", partitions=2)
    group = kafka.group("rebalance")
    streams = ["web-1/latency", "cache/hits"]  # one key on each of the two partitions
    first_part = [(s.encode(), json.dumps({"stream": s, "ts": i, "value": i % 5}).encode())
                  for i in range(60) for s in streams]
    kafka.produce(topic, first_part)

    def replica():
        settings = Settings(bootstrap_servers=kafka_broker.bootstrap_servers, input_topic=topic,
                            group_id=group, metrics_port=-1, commit_interval_s=3600,
                            kafka_client=kafka_client,
                            forecast_every=0, continuation_every=0, engine_params=ENGINE)
        return Application(settings, registry=CollectorRegistry()).start()

    one = replica()
    deadline = time.monotonic() + 60
    while one.stats.consumed < len(first_part) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert kafka.committed(topic, group, 2) == {0: None, 1: None}  # nothing committed yet
    two = replica()
    try:
        deadline = time.monotonic() + 60
        while not (two.loop.assigned and one.loop.assigned) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(one.loop.assigned) == len(two.loop.assigned) == 1
        assert kafka.committed(topic, group, 2) == {0: 60, 1: 60}  # committed on revocation
        second_part = [(s.encode(), json.dumps({"stream": s, "ts": i, "value": 1}).encode())
                       for i in range(60, 90) for s in streams]
        kafka.produce(topic, second_part)
        deadline = time.monotonic() + 60
        while (one.stats.consumed + two.stats.consumed < len(first_part) + len(second_part)
               and time.monotonic() < deadline):
            time.sleep(0.1)
    finally:
        one.stop()
        two.stop()
        assert one.join(60) == 0 and two.join(60) == 0
    scores = kafka.read(f"{topic}.scores", 180, settle_s=1.0)
    got = Counter((r.json()["stream"], r.json()["ts"]) for r in scores)
    assert len(got) == 180 and set(got.values()) == {1}  # every event exactly once
    assert kafka.committed(topic, group, 2) == {0: 90, 1: 90}
