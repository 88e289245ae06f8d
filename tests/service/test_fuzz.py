"""Fuzzing the per-record path (issue 11, "What to show"): 10,000 generated records through
the service's record handler, its decoder and a warm engine, outputs sent to the real broker.

Nothing may raise past the per-record handler: every record is either scored (one score
record, a number in [0, 1]) or dead-lettered with a reason from the closed set, none as
``internal_error`` (which would mean the decoder raised something unexpected), and the counts
add up. Hypothesis runs derandomised (a fixed seed derived from the test), so CI sees the same
10,000 records on every machine; ``database=None`` writes nothing to the tree.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.service import clients
from streamvgan.service.app import Application
from streamvgan.service.settings import Settings
from streamvgan.service.wire import REASONS, DecodeError, decode_event

pytestmark = pytest.mark.kafka

BATCHES = 100
PER_BATCH = 100  # 100 x 100 = 10,000 records
STREAMS = ["a", "b", "c", "host-1/cpu", "ünï/cödé"]

# -- the records ------------------------------------------------------------------------------

_digits = st.integers(min_value=0, max_value=6000).map(lambda n: "1" + "0" * n)
number_text = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(min_value=-1e30, max_value=1e30).map(repr),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    _digits,  # up to 6,001 digits: beyond float64 and beyond Python's 4,300-digit limit
    _digits.map(lambda d: "-" + d + ".5"),
    st.integers(min_value=-400, max_value=400).map(lambda e: f"1e{e}"),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "5e-324", "1e-320", "-0.0", "1e30",
                     "1.0000001e30", "3.4028236e38", "1.7976931348623157e308", "1E400"]),
)


def _event_text(stream: str, ts: str, body: str) -> bytes:
    return f'{{"stream": {json.dumps(stream)}, "ts": {ts}, {body}}}'.encode()


valid_event = st.builds(
    lambda stream, t, x: json.dumps({"stream": stream, "ts": t, "value": x}).encode(),
    st.sampled_from(STREAMS), st.integers(0, 2**40),
    st.one_of(st.floats(min_value=-100, max_value=100), st.integers(-1000, 1000)),
)
event_with_odd_number = st.builds(
    _event_text, st.sampled_from(STREAMS), st.sampled_from(["1", "1.5", "-3", "1" + "0" * 400]),
    st.one_of(number_text.map(lambda n: f'"value": {n}'),
              st.lists(number_text, min_size=1, max_size=4).map(
                  lambda ns: '"values": {' + ", ".join(f'"f{i}": {n}' for i, n in enumerate(ns))
                  + "}")),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
random_json = json_value.map(lambda v: json.dumps(v).encode())
wrong_types = st.fixed_dictionaries(
    {"stream": json_value, "ts": json_value},
    optional={"value": json_value, "values": json_value, "extra": json_value},
).map(lambda d: json.dumps(d).encode())
deep = st.integers(min_value=1, max_value=50_000).map(
    lambda n: b'{"stream": "a", "ts": 1, "value": ' + b"[" * n + b"]" * n + b"}"
)
bad_utf8 = st.binary(max_size=40) | st.builds(
    lambda s: b'{"stream": "' + s + b'", "ts": 1, "value": 1}', st.binary(min_size=1, max_size=6)
)
record_value = st.one_of(
    valid_event, valid_event, valid_event, event_with_odd_number, event_with_odd_number,
    random_json, wrong_types, deep, bad_utf8, st.none(),
)
record_key = st.none() | st.sampled_from([s.encode() for s in STREAMS]) | st.binary(max_size=4)
# (found by this test: a record with neither key nor value made the dead-letter send raise)
records = st.lists(st.tuples(record_key, record_value), min_size=PER_BATCH, max_size=PER_BATCH)


# -- the test ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(kafka_broker, kafka_session):
    topic = kafka_session.topic("fuzz-in")
    s = Settings(bootstrap_servers=kafka_broker.bootstrap_servers, input_topic=topic,
                 group_id=kafka_session.group("fuzz"), metrics_port=-1, forecast_every=7,
                 continuation_every=0)
    clients.ensure_topics(s.bootstrap_servers, [s.scores_topic, s.forecasts_topic,
                                                s.dlq_topic])
    # a warm engine (first fit done), so the network, critic and forecast paths are fuzzed too
    config = EngineConfig.from_params(init="random", hidden_size=8, latent_size=2, warmup_events=200,
                                      first_fit_steps=5, fit_every=10**9)
    engine = StreamEngine(config, seed=0)
    for t in range(150):
        engine.process([Event(x, {"value": math.sin(t / 3 + k)}) for k, x in enumerate(STREAMS)])
    assert engine.fine_tune() is not None and engine.model_version == 1
    application = Application(s, engine=engine, registry=CollectorRegistry())
    producer = clients.make_producer(s.bootstrap_servers, client_id="fuzz")
    yield application, producer
    producer.close(timeout=10)


def test_ten_thousand_generated_records_are_each_scored_or_dead_lettered(app, kafka_session):
    application, producer = app
    s, stats = application.settings, application.stats
    offset = [0]
    expected_dead = [0]

    @settings(max_examples=BATCHES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(records)
    def one_poll(batch: list[tuple[bytes | None, bytes | None]]) -> None:
        polled = []
        for key, value in batch:
            polled.append(ConsumerRecord(s.input_topic, 0, -1, offset[0], 0, 0, key, value, [],
                                         None, -1, -1, -1))
            offset[0] += 1
            try:  # the decoder alone: DecodeError with a known reason, or a finite event
                event = decode_event(value, key)
            except DecodeError as exc:
                assert exc.reason in REASONS and exc.reason != "internal_error"
                expected_dead[0] += 1
            else:
                assert all(math.isfinite(x) and abs(x) <= 1e30 for x in event.values.values())
        before = (stats.consumed, stats.scored, stats.dead_lettered)
        # the service's record handler, as after a poll
        application._handle({TopicPartition(s.input_topic, 0): polled}, producer)
        consumed, scored, dead = (a - b for a, b in
                                  zip((stats.consumed, stats.scored, stats.dead_lettered), before))
        assert consumed == len(batch) == scored + dead

    one_poll()
    n = BATCHES * PER_BATCH
    assert offset[0] == n == stats.consumed == stats.scored + stats.dead_lettered
    registry = application.metrics.registry
    by_reason = {r: registry.get_sample_value("streamvgan_consumer_records_dead_lettered_total",
                                              {"topic": s.input_topic, "reason": r}) or 0.0
                 for r in REASONS}
    assert by_reason["internal_error"] == 0 and sum(by_reason.values()) == stats.dead_lettered
    # the decoder's rejections, plus the engine's (engine_error: a stream changing its fields)
    assert stats.dead_lettered == expected_dead[0] + by_reason["engine_error"]
    # about a quarter of the mix are valid events; far fewer would mean the generator stopped
    # producing them and the engine path went untested
    assert stats.scored >= 1000
    assert by_reason["out_of_range"] > 0 and by_reason["invalid_utf8"] > 0

    scores = kafka_session.read(s.scores_topic, stats.scored, timeout_s=60)
    assert len(scores) == stats.scored
    values = [r.json()["score"] for r in scores]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)  # never null
    assert application.engine.streams_reset == 0  # bounded input never made a state NaN
