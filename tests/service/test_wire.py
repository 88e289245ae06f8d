"""Wire format: every kind of bad record gets its typed reason; outputs round-trip; the
published JSON Schemas (streamvgan/schemas/) and the code agree: the input validator accepts
what the event schema accepts, and every message the service encodes follows its schema."""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import hypothesis
import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvgan.engine import (
    Cause,
    EngineConfig,
    Event,
    Forecast,
    ModelConfig,
    Score,
    StreamEngine,
)
from streamvgan.engine.signals import EXTREME_FLOOR
from streamvgan.schemas import SCHEMA_NAMES, load_schema
from streamvgan.service import wire
from streamvgan.service.wire import (
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
    REASONS,
    SCHEMA_VERSION,
    ContinuationMessage,
    DeadLetter,
    DecodeError,
    ForecastMessage,
    ScoreMessage,
    decode_event,
    encode_forecasts,
)
from streamvgan.service.wire import load_schema as load_event_schema

VALID = [
    (b'{"stream": "host-1/cpu", "ts": 1732867200000, "value": 0.42}', None, "host-1/cpu",
     {"value": 0.42}),
    (b'{"stream": "h", "ts": "2024-11-29T08:00:00Z", "values": {"cpu": 0.42, "mem": 7}}', None,
     "h", {"cpu": 0.42, "mem": 7.0}),
    (b'{"ts": 0, "value": -3}', b"from-key", "from-key", {"value": -3.0}),
    (b'{"ts": "2024-02-29", "value": 1e30}', b"k", "k", {"value": 1e30}),  # the largest accepted
    (b'{"ts": "2024-11-29 08:00:00.123+05:30", "value": 1}', b"k", "k", {"value": 1.0}),
]

BAD = [
    # (value, key, reason)
    (b"\xff\xfe\x00", b"k", "invalid_utf8"),
    (b'{"stream": "caf\xe9", "ts": 1, "value": 1}', None, "invalid_utf8"),
    (b'{"ts": 1, "value": 1}', b"\xff", "invalid_utf8"),  # stream from an invalid key
    (b"not json", b"k", "invalid_json"),
    (b'{"stream": "a", "ts": 1, "value": 1', b"k", "invalid_json"),
    (b"", b"k", "invalid_json"),
    (b"\xef\xbb\xbf{}", b"k", "invalid_json"),  # a byte-order mark is not JSON
    (b"[1, 2]", b"k", "not_an_object"),
    (b'"text"', b"k", "not_an_object"),
    (b"42", b"k", "not_an_object"),
    (b"null", b"k", "not_an_object"),
    (None, b"k", "not_an_object"),  # a tombstone
    (b'{"stream": "a", "ts": 1, "value": NaN}', None, "non_finite"),
    (b'{"stream": "a", "ts": 1, "value": Infinity}', None, "non_finite"),
    (b'{"stream": "a", "ts": 1, "values": {"x": -Infinity}}', None, "non_finite"),
    # beyond +-1e30 (MAX_ABS_VALUE), however written: a poison pill in issue 11 was a
    # 401-digit integer (OverflowError in float()), another >4,300 digits (ValueError in int())
    (b'{"stream": "a", "ts": 1, "value": 1e400}', None, "out_of_range"),  # overflows a double
    (b'{"stream": "a", "ts": 1, "value": 1e39}', None, "out_of_range"),  # overflows a float32
    (b'{"stream": "a", "ts": 1, "value": -1.5e30}', None, "out_of_range"),
    (b'{"stream": "a", "ts": 1, "value": 1' + b"0" * 400 + b'}', None, "out_of_range"),
    (b'{"stream": "a", "ts": 1, "value": -1' + b"0" * 5000 + b'}', None, "out_of_range"),
    (b'{"stream": "a", "ts": 1, "values": {"x": 1' + b"0" * 400 + b'}}', None, "out_of_range"),
    (b'{"stream": "a", "ts": 1' + b"0" * 5000 + b', "value": 1}', None, "out_of_range"),
    (b'{"stream": "a", "ts": 1, "value": 1' + b"0" * 5000 + b'.5}', None, "out_of_range"),
    (b'{"ts": 1, "value": 1}', None, "missing_stream"),
    (b'{"ts": 1, "value": 1}', b"", "missing_stream"),
    (b'{"stream": "a", "ts": 1, "value": true}', None, "schema"),  # bools are not numbers
    (b'{"stream": "a", "ts": 1, "value": "1.5"}', None, "schema"),
    (b'{"stream": "a", "ts": 1, "value": null}', None, "schema"),
    (b'{"stream": "a", "ts": 1, "value": 1, "extra": 2}', None, "schema"),
    (b'{"stream": "a", "ts": 1}', None, "schema"),
    (b'{"stream": "a", "ts": 1, "value": 1, "values": {"x": 1}}', None, "schema"),
    (b'{"stream": "a", "ts": 1, "values": {}}', None, "schema"),
    (b'{"stream": "a", "ts": 1, "values": [1, 2]}', None, "schema"),
    (b'{"stream": "a", "ts": 1, "values": {"x": false}}', None, "schema"),
    (b'{"stream": "a", "ts": 1, "values": {"": 1}}', None, "schema"),
    (b'{"stream": "a", "value": 1}', None, "schema"),  # ts is required
    (b'{"stream": "a", "ts": true, "value": 1}', None, "schema"),
    (b'{"stream": "a", "ts": 1.5, "value": 1}', None, "schema"),
    (b'{"stream": "a", "ts": -1, "value": 1}', None, "schema"),
    (b'{"stream": "a", "ts": "yesterday", "value": 1}', None, "schema"),
    (b'{"stream": "a", "ts": "2024-02-30T00:00:00Z", "value": 1}', None, "schema"),
    (b'{"stream": "a", "ts": null, "value": 1}', None, "schema"),
    (b'{"stream": 5, "ts": 1, "value": 1}', None, "schema"),
    (b'{"stream": "", "ts": 1, "value": 1}', None, "schema"),
    (b'{"stream": null, "ts": 1, "value": 1}', b"k", "schema"),
    (b'{"stream": "a", "stream": "b", "ts": 1, "value": 1}', None, "schema"),  # duplicate key
]


@pytest.mark.parametrize("value, key, stream, values", VALID)
def test_valid_records_decode(value, key, stream, values):
    event = decode_event(value, key)
    assert event.stream == stream
    assert dict(event.values) == values
    assert event.ts == json.loads(value)["ts"]  # echoed unchanged, string or int


@pytest.mark.parametrize("value, key, reason", BAD)
def test_each_bad_kind_has_its_reason(value, key, reason):
    with pytest.raises(DecodeError) as info:
        decode_event(value, key)
    assert info.value.reason == reason
    assert info.value.message  # says what was wrong
    assert isinstance(info.value, ValueError)


def test_every_decode_reason_is_covered_by_a_case():
    covered = {reason for _, _, reason in BAD}
    # engine_error comes from the engine; internal_error only from a bug in the decoder
    assert covered == set(REASONS) - {"engine_error", "internal_error"}


def test_values_at_the_range_limit_are_accepted():
    event = decode_event(b'{"stream": "a", "ts": 1, "values": {"x": 1e30, "y": -1e30, "z": 1e-300}}')
    assert event.values == {"x": 1e30, "y": -1e30, "z": 1e-300}
    big = decode_event(b'{"stream": "a", "ts": 1, "value": ' + str(10**29).encode() + b'}')
    assert big.values == {"value": 1e29}


def test_long_stream_ids_are_rejected():
    with pytest.raises(DecodeError) as info:
        decode_event(json.dumps({"stream": "x" * 257, "ts": 1, "value": 1}).encode())
    assert info.value.reason == "schema"
    assert decode_event(json.dumps({"stream": "x" * 256, "ts": 1, "value": 1}).encode())


def test_score_message_echoes_stream_and_ts_and_flags_at_threshold():
    score = Score("s/1", 0.995, 3.2, {"surprise": 1.0, "reconstruction": 2.0, "critic": 0.5}, 4,
                  True, ts=None)
    msg = ScoreMessage.from_score(score, "2024-11-29T08:00:00Z", threshold=0.99)
    data = json.loads(msg.to_bytes())
    assert data["schema_version"] == 1
    assert (data["stream"], data["ts"]) == ("s/1", "2024-11-29T08:00:00Z")
    assert data["anomaly"] is True and data["model_version"] == 4
    assert ScoreMessage.from_score(score, 7, threshold=0.999).anomaly is False
    assert ScoreMessage.from_bytes(msg.to_bytes()) == msg
    assert "cause" not in data  # a Score without a cause: the field is left out


def test_score_message_carries_the_cause():
    score = Score("s/1", 1.0, 3.2, {"surprise": 1.0}, 4, True, ts=None,
                  cause=Cause("extreme", "mem"))
    msg = ScoreMessage.from_score(score, 7, threshold=0.99)
    assert json.loads(msg.to_bytes())["cause"] == {"signal": "extreme", "field": "mem"}
    assert ScoreMessage.from_bytes(msg.to_bytes()) == msg


def test_forecast_and_continuation_messages():
    mean = np.arange(6, dtype=np.float32).reshape(3, 2)
    fc = Forecast("s", ["a", "b"], mean, {0.1: mean - 1, 0.5: mean, 0.9: mean + 1}, 2, True)
    msg = ForecastMessage.from_forecast(fc, 123)
    data = json.loads(msg.to_bytes())
    assert data["horizon"] == 3 and data["ts"] == 123 and data["schema_version"] == 1
    assert data["mean"] == {"a": [0.0, 2.0, 4.0], "b": [1.0, 3.0, 5.0]}
    assert data["quantiles"]["0.9"]["b"] == [2.0, 4.0, 6.0]
    samples = np.zeros((4, 3, 2))
    samples[:, :, 1] = 1.0
    cm = ContinuationMessage.from_array("s", 123, ["a", "b"], samples, 2)
    data = json.loads(cm.to_bytes())
    assert data["n_samples"] == 4 and len(data["samples"]["b"]) == 4
    assert data["samples"]["b"][0] == [1.0, 1.0, 1.0]


def test_non_finite_outputs_become_null_not_invalid_json():
    fc = Forecast("s", ["v"], np.array([[np.nan]]), {}, 0, False)
    data = json.loads(ForecastMessage.from_forecast(fc, 1).to_bytes())
    assert data["mean"] == {"v": [None]}


def test_dead_letter_headers_round_trip_and_keep_original_headers():
    letter = DeadLetter("schema", "bad", "events", 3, 42, original_headers=(("trace", b"x"),))
    headers = letter.headers()
    assert headers[0] == ("trace", b"x")
    found = dict(headers)
    assert found[H_REASON] == b"schema" and found[H_TOPIC] == b"events"
    assert found[H_PARTITION] == b"3" and found[H_OFFSET] == b"42"
    assert DeadLetter.from_headers(headers) == letter


# -- the published schemas and the code agree ----------------------------------------------


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)  # the file itself is a valid schema
    return jsonschema.Draft202012Validator(schema)


def _schema_accepts(instance: Any) -> bool:
    return _validator("event").is_valid(instance)


def _validator_accepts(instance: Any) -> bool:
    """Whether the service decodes ``instance``; the record has a key, which the schema allows
    as the stream id when ``stream`` is absent."""
    try:
        decode_event(json.dumps(instance).encode(), key=b"key-stream")
    except DecodeError:
        return False
    return True


AGREEMENT = [
    {"stream": "host-1/cpu", "ts": 1732867200000, "value": 0.42},
    {"stream": "h", "ts": "2024-11-29T08:00:00Z", "values": {"cpu": 0.42, "mem": 0.7}},
    {"stream": "h", "ts": "2024-11-29", "value": 1},
    {"stream": "h", "ts": "2024-11-29T08:00", "value": 1},
    {"stream": "h", "ts": "2024-11-29T08:00:00.5-0800", "value": 1},
    {"stream": "h", "ts": "2024-13-01", "value": 1},
    {"stream": "h", "ts": "2024-11-29T24:00:00Z", "value": 1},
    {"stream": "h", "ts": "29/11/2024", "value": 1},
    {"stream": "h", "ts": 1.5, "value": 1},
    {"stream": "h", "ts": -5, "value": 1},
    {"stream": "h", "ts": 253402300800000, "value": 1},
    {"stream": "h", "ts": True, "value": 1},
    {"stream": "h", "ts": 1, "value": "1"},
    {"stream": "h", "ts": 1, "value": False},
    {"stream": "h", "ts": 1, "value": None},
    {"stream": "h", "ts": 1},
    {"stream": "h", "ts": 1, "value": 1, "values": {"a": 1}},
    {"stream": "h", "ts": 1, "values": {}},
    {"stream": "h", "ts": 1, "values": {"a": "x"}},
    {"stream": "h", "ts": 1, "values": {"": 1}},
    {"stream": "h", "ts": 1, "values": {f"f{i}": 1 for i in range(65)}},
    {"stream": "h", "ts": 1, "values": {"a" * 65: 1}},
    {"stream": "h", "value": 1},
    {"stream": "", "ts": 1, "value": 1},
    {"stream": "x" * 257, "ts": 1, "value": 1},
    {"stream": 3, "ts": 1, "value": 1},
    {"stream": None, "ts": 1, "value": 1},
    {"stream": "h", "ts": 1, "value": 1, "unit": "ms"},
    {"stream": "h", "ts": 1, "value": 1e30},
    {"stream": "h", "ts": 1, "value": -1e39},
    {"stream": "h", "ts": 1, "values": {"a": 1e300}},
    {"stream": "h", "ts": 1, "value": 10**400},
    {"ts": 1, "value": 1},  # the stream comes from the record key
    {"ts": 1, "values": {"a": 1, "b": 2}},
    {"ts": 1},
]


@pytest.mark.parametrize("instance", AGREEMENT + load_schema("event")["examples"])
def test_schema_file_and_validator_agree(instance):
    assert _schema_accepts(instance) == _validator_accepts(instance)


def test_both_accept_and_reject_cases_are_covered():
    verdicts = {_schema_accepts(instance) for instance in AGREEMENT}
    assert verdicts == {True, False}


def test_a_date_that_does_not_exist_is_the_one_known_difference():
    """A pattern cannot check the calendar; the decoder does (the schema's ts says so)."""
    instance = {"stream": "h", "ts": "2024-02-30T00:00:00Z", "value": 1}
    assert _schema_accepts(instance) and not _validator_accepts(instance)
    assert "2024-02-30" in load_schema("event")["properties"]["ts"]["description"]


def test_wire_loads_the_same_event_schema():
    assert load_event_schema() == load_schema("event")


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_is_valid_versioned_and_its_examples_conform(name):
    schema = load_schema(name)
    validator = _validator(name)
    assert schema["x-schema-version"] == SCHEMA_VERSION
    assert schema["$id"].endswith(f"/{name}.schema.json")
    assert schema["examples"]
    for example in schema["examples"]:
        validator.validate(example)
    if name in ("score", "forecast", "continuation"):
        assert schema["properties"]["schema_version"] == {
            "description": schema["properties"]["schema_version"]["description"],
            "const": SCHEMA_VERSION,
        }
        assert "schema_version" in schema["required"]
        # the outputs echo the input's ts, so they accept exactly what the input accepts
        assert schema["properties"]["ts"]["oneOf"] == load_schema("event")["properties"]["ts"][
            "oneOf"
        ]


def test_event_schema_examples_decode():
    for example in load_schema("event")["examples"]:
        decode_event(json.dumps(example).encode(), key=b"key-stream")


def test_dead_letter_reasons_in_the_schema_are_the_code_s():
    schema = load_schema("dead_letter_headers")
    assert schema["properties"][H_REASON]["enum"] == list(REASONS)


# -- real messages, as the service encodes them, follow their schemas -----------------------


def _outputs(events: list[Event], engine: StreamEngine) -> dict[str, list[Any]]:
    """The JSON of the records the service writes for ``events``, encoded as app.py does: a
    score per event, a forecast per stream (and per quantile level) and a continuation."""
    out: dict[str, list[Any]] = {"score": [], "forecast": [], "continuation": []}
    last_ts: dict[str, Any] = {}
    for i in range(0, len(events), 9):  # polls of three events per stream
        poll = events[i : i + 9]
        for event, score in zip(poll, engine.process(poll)):
            msg = ScoreMessage.from_score(score, event.ts, threshold=0.99)
            out["score"].append(json.loads(msg.to_bytes()))
            last_ts[event.stream] = event.ts
        engine.fine_tune()
    streams = sorted(last_ts)
    for fc in engine.forecast(streams):
        out["forecast"].append(
            json.loads(ForecastMessage.from_forecast(fc, last_ts[fc.stream]).to_bytes())
        )
    for stream in streams:
        samples = engine.generate(stream, engine.config.horizon, 3)
        cm = ContinuationMessage.from_array(
            stream, last_ts[stream], engine.fields(stream), samples, engine.model_version
        )
        out["continuation"].append(json.loads(cm.to_bytes()))
    return out


@pytest.fixture(scope="module")
def real_outputs() -> dict[str, list[Any]]:
    """Three streams (epoch-ms and ISO ts, one with two fields, one constant) through the
    cold start, the first fit and a later one."""
    engine = StreamEngine(
        EngineConfig(init="random", warmup_events=90, first_fit_steps=5, fit_steps=2, fit_every=60).with_model(
            hidden_size=8
        ),
        seed=0,
    )
    events = []
    for t in range(200):
        cpu = 40 + 5 * math.sin(t / 5)
        events.append(Event("host-1/cpu", {"value": cpu}, 1_700_000_000_000 + t))
        events.append(
            Event(
                "host-1",
                {"cpu": 0.4 + 0.1 * math.cos(t / 3), "mem": 0.7 + (3.0 if t == 150 else 0.0)},
                f"2024-11-29T08:{t // 60:02d}:{t % 60:02d}Z",
            )
        )
        events.append(Event("flat", {"value": 5.0}, t))
    return _outputs(events, engine)


def test_real_outputs_cover_cold_warm_and_every_field(real_outputs):
    scores = real_outputs["score"]
    assert len(scores) == 600
    # every score says why once its stream has history; the spike in host-1's "mem" (t = 150)
    # is a new extreme in that field
    assert ["cause" in s for s in scores[:60]] == [False] * 60  # 20 events of 3 streams
    assert all("cause" in s for s in scores[60:])
    spike = next(s for s in scores if s["stream"] == "host-1" and s["ts"].endswith("02:30Z"))
    assert spike["cause"] == {"signal": "extreme", "field": "mem"}
    assert spike["score"] >= EXTREME_FLOOR
    assert {s["cause"]["field"] for s in scores[60:]} == {"value", "cpu", "mem"}
    assert {s["warm"] for s in scores} == {False, True}
    assert max(s["model_version"] for s in scores) >= 2
    assert {tuple(f["fields"]) for f in real_outputs["forecast"]} == {("value",), ("cpu", "mem")}
    assert all(len(f["quantiles"]) >= 2 for f in real_outputs["forecast"])


@pytest.mark.parametrize("kind", ["score", "forecast", "continuation"])
def test_every_real_output_follows_its_schema(real_outputs, kind):
    validator = _validator(kind)
    for message in real_outputs[kind]:
        validator.validate(message)


def test_real_dead_letter_headers_follow_their_schema():
    validator = _validator("dead_letter_headers")
    for reason in REASONS:
        letter = DeadLetter(reason, f"why: {reason} \u2014 with the value", "events", 3, 42,
                            original_headers=(("trace-id", b"4bf92f35"),))
        validator.validate({k: v.decode("utf-8") for k, v in letter.headers()})


BROKEN = [
    # (schema, what is broken, a change to a real message of that kind)
    ("score", "no schema_version", lambda m: m.pop("schema_version")),
    ("score", "a future schema_version", lambda m: m.update(schema_version=2)),
    ("score", "score above 1", lambda m: m.update(score=1.5)),
    ("score", "score null (non-finite)", lambda m: m.update(score=None)),
    ("score", "a component missing", lambda m: m["components"].pop("jump")),
    ("score", "anomaly as a string", lambda m: m.update(anomaly="false")),
    ("score", "an unknown property", lambda m: m.update(extra=1)),
    ("score", "ts not an ISO date", lambda m: m.update(ts="yesterday")),
    ("score", "a cause that is no signal", lambda m: m["cause"].update(signal="critic")),
    ("score", "a cause without its field", lambda m: m["cause"].pop("field")),
    ("forecast", "horizon 0", lambda m: m.update(horizon=0)),
    ("forecast", "a mean that is a number", lambda m: m.update(mean={"value": 1.0})),
    ("forecast", "a string in the mean", lambda m: m["mean"][m["fields"][0]].append("1")),
    ("forecast", "a quantile level that is not one", lambda m: m["quantiles"].update(p90={})),
    ("forecast", "no fields", lambda m: m.update(fields=[])),
    ("continuation", "n_samples missing", lambda m: m.pop("n_samples")),
    ("continuation", "a sample that is a number", lambda m: m["samples"][m["fields"][0]].append(1)),
    ("continuation", "negative model_version", lambda m: m.update(model_version=-1)),
    ("dead_letter_headers", "a reason outside the closed set", lambda m: m.update(
        {H_REASON: "oops"})),
    ("dead_letter_headers", "no offset", lambda m: m.pop(H_OFFSET)),
    ("dead_letter_headers", "a partition that is not a number", lambda m: m.update(
        {H_PARTITION: "three"})),
    ("dead_letter_headers", "an unknown error header", lambda m: m.update(
        {"__streamvgan.errors.stack": "x"})),
]


@pytest.mark.parametrize("name, broken, change", BROKEN, ids=[b for _, b, _ in BROKEN])
def test_a_broken_message_fails_validation(real_outputs, name, broken, change):
    if name == "dead_letter_headers":
        letter = DeadLetter("schema", "bad", "events", 3, 42, original_headers=(("t", b"x"),))
        message = {k: v.decode() for k, v in letter.headers()}
    else:
        message = json.loads(json.dumps(real_outputs[name][-1]))  # a deep copy
    validator = _validator(name)
    validator.validate(message)  # valid before the change
    change(message)
    assert not validator.is_valid(message), broken


def test_score_message_carries_the_field_scores_of_a_multivariate_event_only():
    # issue 15: "fields" after "cause", for an event of several fields; one field: the
    # record as before, byte for byte
    fields = {"cpu": 0.9996, "mem": 0.12}
    many = Score("h", 0.9996, 1.3, {}, 3, True, cause=Cause("jump", "cpu"), fields=fields)
    data = ScoreMessage.from_score(many, 7, threshold=0.99).to_bytes()
    assert data.endswith(
        b'"cause":{"signal":"jump","field":"cpu"},"fields":{"cpu":0.9996,"mem":0.12}}'
    )
    assert ScoreMessage.from_bytes(data) == ScoreMessage.from_score(many, 7, threshold=0.99)
    one = Score("s", 0.5, 0.1, {"surprise": 0.1}, 3, True, ts=None, cause=Cause("level", "value"))
    assert ScoreMessage.from_score(one, 1, threshold=0.99).to_bytes() == (
        b'{"schema_version":1,"stream":"s","ts":1,"score":0.5,"raw":0.1,'
        b'"components":{"surprise":0.1},"model_version":3,"warm":true,"anomaly":false,'
        b'"cause":{"signal":"level","field":"value"}}'
    )


@pytest.mark.parametrize("field_mode", ["channels", "joint"])
def test_forecast_records_from_columns_equal_the_per_stream_messages(field_mode):
    # the service encodes the engine's forecast columns; each record must be the bytes of
    # the documented per-stream path (ForecastMessage.from_forecast), cold and fitted, for
    # one- and two-field streams, a stream whose fields differ in scale, and an empty call
    joint = field_mode == "joint"
    engine = StreamEngine(EngineConfig(field_mode=field_mode, warmup_events=40,
                                       first_fit_steps=2, init="random",
                                       model=ModelConfig(n_features=2 if joint else 1)), seed=3)
    streams = ["pair"] if joint else ["a", "pair", "z"]
    for t in range(150):
        events = [Event("pair", {"cpu": math.sin(t / 4), "mem": 2e6 + 1e3 * math.cos(t / 9)})]
        if not joint:
            events += [Event("a", {"value": 0.1 * t}), Event("z", {"value": -1e-3 * t})]
        engine.process(events)
        if t in (20, 149):  # cold, then fitted
            if t == 149:
                assert engine.fine_tune(force=True) is not None
            ts = {s: f"t{t}-{s}" for s in streams}
            columns = engine.forecast_columns(streams)
            assert len(columns) == len(streams) and columns.joint == joint
            got = encode_forecasts(columns, ts)
            want = [ForecastMessage.from_forecast(fc, ts[fc.stream]).to_bytes()
                    for fc in engine.forecast(streams)]
            assert got == want
            record = json.loads(got[streams.index("pair")])
            assert record["fields"] == ["cpu", "mem"] and record["warm"] == (t == 149)
            assert set(record["quantiles"]) == {"0.1", "0.5", "0.9"}
            assert len(record["mean"]["mem"]) == engine.config.horizon
    assert encode_forecasts(engine.forecast_columns([]), {}) == []


# -- the decoder's orjson fast path -------------------------------------------------------------

_key = st.sampled_from(["stream", "ts", "value", "values", "x", 'q"uote', "b\\s", "é", ""])
_string_text = st.one_of(
    st.text(max_size=12).map(json.dumps),  # escapes \" \\ \n ..., non-ASCII as \uXXXX
    st.text(max_size=12).map(lambda t: json.dumps(t, ensure_ascii=False)),  # raw non-ASCII
    st.sampled_from(['"a\\"b"', '"a\\\\"', '"\\u0022"', '"\\ud800"', '"\\/"', '"a\tb"', '"\x7f"']),
)
_number_text = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.25e}"),
    st.integers(min_value=-(10**45), max_value=10**45).map(str),
    st.sampled_from(["NaN", "-Infinity", "1e400", "-0", "-0.0", "5e-324", "1e-400", "01", "1.",
                     "9223372036854775807", "9223372036854775808", "18446744073709551616",
                     "9223372036854775807.0", "1" + "0" * 50]),
)
_scalar_text = st.one_of(
    _number_text, _string_text, st.sampled_from(["true", "false", "null", "[1, 2]", "[]"])
)
_space = st.sampled_from(["", " ", "\n", "\t", "\r\n ", "\x0c"])


@st.composite
def _object_text(draw: Any, depth: int = 0) -> str:
    items = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        value = draw(_object_text(depth + 1) if depth < 2 and draw(st.booleans()) else _scalar_text)
        items.append(f"{draw(_space)}{json.dumps(draw(_key))}{draw(_space)}:{draw(_space)}{value}")
    return "{" + ",".join(items) + draw(_space) + "}"


_record_text = st.one_of(
    _object_text(),
    st.builds(lambda text, cut: text[:cut], _object_text(), st.integers(0, 60)),  # truncated
    st.builds(lambda text, junk: text + junk, _object_text(), _scalar_text | _space),
    _scalar_text,
)


def _outcome(decode: Any, text: str) -> tuple[str, str]:
    """What ``decode(text)`` does, with every number's type and exact value spelt out."""
    try:
        return "ok", json.dumps(_typed(decode(text)))
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return type(exc).__name__, str(exc)


def _typed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return [[k, _typed(v)] for k, v in obj.items()]
    if isinstance(obj, list):
        return [_typed(v) for v in obj]
    if isinstance(obj, float):
        return ["float", obj.hex()]
    return [type(obj).__name__, obj]


@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(_record_text)
# integers beyond 64 bits, which orjson reads as floats
@hypothesis.example('{"value": 18446744073709551616}')
@hypothesis.example('{"value": 1' + "0" * 50 + "}")
@hypothesis.example('{"values": [18446744073709551616]}')  # inside a list or an object nested twice
@hypothesis.example('{"values": {"x": {"y": 1, "y": 2}}}')
# a duplicate whose quotes a \\u0022 escape would make up for in the count
@hypothesis.example('{"stream": "a", "stream": "\\u0022\\u0022\\u0022\\u0022", "ts": 1}')
def test_the_fast_path_decodes_as_the_standard_library(text):
    """orjson's answer is taken only where it is the standard library's: the same object,
    every number of the same type and bits, every error the same exception and message."""
    assert _outcome(wire._parse, text) == _outcome(wire._decoder.decode, text)


@pytest.mark.parametrize(
    "text",
    [
        '{"stream": "a", "ts": 1, "value": 1}',
        '{"stream": "a\\"b", "ts": 1, "values": {"x": 1.5, "y\\\\": -2}}',
    ],
)
def test_the_fast_path_is_taken_for_plain_events(text, monkeypatch):
    """(So the property test above compares the two paths, not the fallback with itself.)"""
    monkeypatch.setattr(wire, "_decoder", None)  # the fallback would raise AttributeError
    assert wire._parse(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"stream": "a", "stream": "b", "ts": 1, "value": 1}',
        '{"stream": "a", "ts": 1, "values": {"x": 1, "x": 2}}',
        '{"stream": "a\\"", "stream": "b", "ts": 1, "value": 1}',
        '{"stream": "a", "ts": 1, "value": 1' + "0" * 30 + "}",
        '{"stream": "\\u0061", "ts": 1, "value": 1}',
    ],
)
def test_duplicates_escapes_and_wide_numbers_take_the_standard_library(text, monkeypatch):
    calls = []
    fallback = type("Fallback", (), {"decode": lambda self, t: calls.append(t)})
    monkeypatch.setattr(wire, "_decoder", fallback())
    wire._parse(text)
    assert calls == [text]
