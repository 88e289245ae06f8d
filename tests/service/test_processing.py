"""The service's batch processing, commit order and loop, with in-memory clients: no broker.

A :class:`~streamvgan.service.processing.Processor` is a function of a batch of records (plus
the engine's state), so its outputs are compared with a twin engine fed the same events; the
loop runs on fake clients that log every send, flush and commit, so the at-least-once order
(outputs acknowledged -> changelog acknowledged -> commit) is checked step by step.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.errors import InvalidInputError
from streamvgan.service.app import Application
from streamvgan.service.changelog import StateChangelog
from streamvgan.service.kafka_api import TopicPartition
from streamvgan.service.metrics import ServiceMetrics
from streamvgan.service.processing import (
    DueSchedule,
    OutputTopics,
    PassThroughProcessor,
    ScoringProcessor,
    phase,
)
from streamvgan.service.settings import Settings
from streamvgan.service.state import ProduceError, StateStore
from streamvgan.service.wire import (
    H_OFFSET,
    H_REASON,
    ForecastMessage,
    ScoreMessage,
    decode_event,
)

TOPICS = OutputTopics("in.scores", "in.forecasts", "in.continuations", "in.dlq")
ENGINE = {"init": "random", "hidden_size": 8, "latent_size": 2, "warmup_events": 10**9}


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _engine() -> StreamEngine:
    return StreamEngine(EngineConfig.from_params(**ENGINE), seed=0)


def _event(stream: str, ts: int, value: float) -> bytes:
    return json.dumps({"stream": stream, "ts": ts, "value": value}).encode()


def _poll(
    start: int, n: int, bad: bool = False, offsets: dict[int, int] | None = None
) -> dict[TopicPartition, list[Rec]]:
    """``n`` events of streams a, b, c over two partitions (a stream keeps its partition),
    at ``offsets`` (next offset per partition, advanced here); with ``bad``, two malformed
    records after them."""
    out: dict[TopicPartition, list[Rec]] = {}
    offsets = {0: 0, 1: 0} if offsets is None else offsets
    for i in range(start, start + n):
        stream = "abc"[i % 3]
        p = 0 if stream == "a" else 1
        value = _event(stream, i, math.sin(i / 4) + (i % 3))
        out.setdefault(TopicPartition("in", p), []).append(
            Rec("in", p, offsets[p], stream.encode(), value)
        )
        offsets[p] += 1
    if bad:
        tp = TopicPartition("in", 1)
        for value in (b"{not json", b'{"stream": "b", "ts": 1, "value": NaN}'):
            out[tp].append(Rec("in", 1, offsets[1], b"b", value))
            offsets[1] += 1
    return out


def test_scoring_processor_outputs_equal_a_twin_engine_and_dead_letter_the_bad():
    engine, twin = _engine(), _engine()
    proc = ScoringProcessor(
        engine,
        TOPICS,
        forecast_every=4,
        continuation_every=0,
        continuation_samples=2,
        alert_threshold=0.99,
    )
    records = _poll(0, 12, bad=True)
    result = proc.process(records)
    events = [
        Event(s, {"value": math.sin(i / 4) + (i % 3)}, ts=i)
        for i, s in ((i, "abc"[i % 3]) for i in range(12))
    ]
    # the processor groups by partition: a's events first, then b's and c's
    order = [e for e in events if e.stream == "a"] + [e for e in events if e.stream != "a"]
    expected = [ScoreMessage.from_score(s, e.ts, 0.99) for e, s in zip(order, twin.process(order))]
    scores = [o for o in result.outputs if o.topic == TOPICS.scores]
    assert [json.loads(o.value) for o in scores] == [json.loads(m.to_bytes()) for m in expected]
    assert [o.key for o in scores] == [e.stream.encode() for e in order]
    dead = [o for o in result.outputs if o.topic == TOPICS.dlq]
    assert [dict(o.headers)[H_REASON] for o in dead] == [b"invalid_json", b"non_finite"]
    assert [int(dict(o.headers)[H_OFFSET]) for o in dead] == [8, 9]
    assert dead[0].value == b"{not json"  # the original bytes
    assert result.records == 14 and result.scored == 12
    assert result.next_offsets == {TopicPartition("in", 0): 4, TopicPartition("in", 1): 10}
    assert result.touched == {"a": 0, "b": 1, "c": 1}
    assert dict(result.dead_lettered) == {("in", "invalid_json"): 1, ("in", "non_finite"): 1}
    # 4 events per stream: each crossed forecast_every=4 once
    assert sorted(json.loads(o.value)["stream"] for o in result.outputs
                  if o.topic == TOPICS.forecasts) == ["a", "b", "c"]
    assert result.forecasts == 3 and result.produced[TOPICS.forecasts] == 3


def _old_score_records(engine: StreamEngine, events: list[Event], threshold: float) -> list:
    """What the service sent before it used the columnar path (per-event Score objects and
    ScoreMessage.from_score), including its one-by-one retry of a batch the engine rejects."""
    try:
        scores = engine.process(events)
    except InvalidInputError:
        scores = []
        for event in events:
            with contextlib.suppress(InvalidInputError):
                scores += engine.process([event])
    return [(s.stream.encode(), ScoreMessage.from_score(s, s.ts, threshold).to_bytes())
            for s in scores]


def test_score_records_from_the_columns_are_the_bytes_of_the_per_event_path():
    """Issue 13: the service builds its score records straight from the engine's columns,
    and its forecast records in one pass; they must be byte for byte those of the former path
    (Score -> ScoreMessage -> bytes, Forecast -> ForecastMessage -> bytes):
    cold and fitted model, one- and two-field streams (cause and per-field scores), epoch and
    ISO ts, alerts on both sides of the threshold, and a batch the engine rejects."""
    config = dict(ENGINE, warmup_events=40, first_fit_steps=3, window=40)
    new = StreamEngine(EngineConfig.from_params(**config), seed=3)
    old = StreamEngine(EngineConfig.from_params(**config), seed=3)
    threshold = 0.6  # about half the cold-start scores of these streams are above it
    proc = ScoringProcessor(new, TOPICS, forecast_every=1, continuation_every=0,
                            continuation_samples=2, alert_threshold=threshold)
    tp = TopicPartition("in", 0)
    compared = alerts = causes = fields = 0
    for poll in range(6):
        recs = []
        for i in range(poll * 20, poll * 20 + 20):
            ts = i if i % 2 else f"2024-11-29T08:{i % 60:02d}:00Z"
            a = {"stream": "a", "ts": ts, "value": math.sin(i / 3) + (5.0 if i == 70 else 0)}
            hm = {"stream": "h/m", "ts": ts, "values": {"cpu": i % 7, "mem": 1e6 + i * 13.5}}
            recs += [json.dumps(a), json.dumps(hm)]
        if poll == 4:  # a field the stream never had: the engine rejects the batch
            recs.insert(5, json.dumps({"stream": "a", "ts": 1, "values": {"other": 1.0}}))
        records = {tp: [Rec("in", 0, k, None, r.encode()) for k, r in enumerate(recs)]}
        events = [decode_event(r.value) for r in records[tp]]
        expected = _old_score_records(old, events, threshold)
        outputs = proc.process(records).outputs
        got = [(o.key, o.value) for o in outputs if o.topic == TOPICS.scores]
        assert got == expected
        # forecasts too: the per-stream ForecastMessage path against the batched encoder
        last_ts = {json.loads(v)["stream"]: json.loads(v)["ts"] for _, v in got}
        want = [ForecastMessage.from_forecast(fc, last_ts[fc.stream]).to_bytes()
                for fc in old.forecast(list(last_ts))]
        assert [o.value for o in outputs if o.topic == TOPICS.forecasts] == want
        compared += len(got)
        alerts += sum(json.loads(v)["anomaly"] for _, v in got)
        causes += sum("cause" in json.loads(v) for _, v in got)
        # the per-field scores: in the two-field stream's records only (issue 15)
        assert all(("fields" in json.loads(v)) == (k == b"h/m") for k, v in got)
        fields += sum("fields" in json.loads(v) for _, v in got)
        if poll == 2:  # fit both the same way: the later polls are scored by a model
            assert new.fine_tune(force=True) is not None and old.fine_tune(force=True) is not None
    assert compared == 240 and 0 < alerts < compared and causes > 0 and fields == 120
    assert json.loads(got[-1][1])["warm"] and json.loads(got[-1][1])["model_version"] == 1


def test_pass_through_sends_the_same_records_as_the_service():
    """Same decoding, validation, dead letters and schedule: the benchmark's baseline differs
    from the service only by the model."""
    kwargs = dict(forecast_every=3, continuation_every=5, continuation_samples=2)
    service = ScoringProcessor(_engine(), TOPICS, alert_threshold=0.99, **kwargs)
    baseline = PassThroughProcessor(TOPICS, horizon=12, seed=0, **kwargs)
    offsets = {0: 0, 1: 0}
    for start in (0, 12, 24):
        records = _poll(start, 12, bad=True, offsets=offsets)
        a, b = service.process(records), baseline.process(records)
        assert [(o.topic, o.key) for o in a.outputs] == [(o.topic, o.key) for o in b.outputs]
        assert [o.headers for o in a.outputs if o.letter] == [
            o.headers for o in b.outputs if o.letter
        ]
        assert (a.records, a.scored, a.forecasts, a.continuations, a.next_offsets) == (
            b.records, b.scored, b.forecasts, b.continuations, b.next_offsets)
        assert b.touched == {}  # no state: nothing for the changelog


def test_due_schedule_fires_once_per_crossed_multiple():
    due = DueSchedule(forecast_every=3, continuation_every=0)
    pa, pb = phase("a", 3), phase("b", 3)
    assert (pa, pb) == (0, 2)  # CRC-32 of the ids: the same in every process
    assert due.due(["a", "a"]) == ([], [])
    # a: 2 -> 6 crosses 3 and 6: once; b, two events into its cadence: 0 -> 1 crosses it
    assert due.due(["a", "b", "a", "a", "a"]) == (["a", "b"], [])
    due.forget("a")
    assert due.due(["a", "a", "a"]) == (["a"], [])
    assert due.due(["b", "b"]) == ([], [])  # b: 1 -> 3
    assert due.due(["b"]) == (["b"], [])  # 3 -> 4: three events after its last


def test_streams_that_start_together_are_spread_over_the_cadence():
    # 1,000 streams, one event each per poll, from the same count (a restart, a fleet
    # reporting at one rate): before the phase, all 1,000 continuations came due in one poll
    every, streams = 100, [f"host-{i}/cpu" for i in range(1000)]
    due = DueSchedule(forecast_every=1, continuation_every=every)
    per_poll = []
    for _ in range(3 * every):
        forecasts, continuations = due.due(streams)
        assert forecasts == streams  # every event: phase 0
        per_poll.append(len(continuations))
    assert sum(per_poll) == 3 * len(streams)  # still one per stream per 100 events
    assert max(per_poll) <= 30  # ~10 per poll on average (1,000 / 100), CRC-32 spread
    for stream in streams[:50]:  # each stream every 100 events exactly, at its own phase
        due.forget(stream)
    counts = Counter()
    fresh = DueSchedule(forecast_every=0, continuation_every=every)
    for n in range(1, 301):
        counts.update(fresh.due(streams[:50])[1])
    assert set(counts.values()) == {3}
    assert {phase(s, every) for s in streams[:50]} != {0}


# -- fakes of the client interface ------------------------------------------------------------


class _Handle:
    def __init__(self) -> None:
        self.errbacks: list[Any] = []

    def add_errback(self, fn: Any) -> _Handle:
        self.errbacks.append(fn)
        return self


class FakeProducer:
    """Acknowledges at :meth:`flush` or :meth:`ack` (or fails every record of
    ``fail_topics``); logs to ``log``."""

    def __init__(self, log: list[tuple], fail_topics: tuple[str, ...] = ()) -> None:
        self.log = log
        self.fail_topics = fail_topics
        self.healthy = True
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.headers: list[list[tuple[str, bytes]] | None] = []  # of each record sent
        self._unflushed: list[tuple[str, _Handle]] = []
        self.acked = 0  # records the broker answered so far

    def ack(self) -> None:
        """The broker answers every record sent so far (without a flush)."""
        for topic, handle in self._unflushed:
            if topic in self.fail_topics:
                for fn in handle.errbacks:
                    fn(RuntimeError(f"{topic} refused"))
        self._unflushed = []
        self.acked = len(self.sent)

    def send(self, topic, *, key=None, value=None, headers=None, partition=None):
        handle = _Handle()
        self.sent.append((topic, key, value, partition))
        self.headers.append(headers)
        self._unflushed.append((topic, handle))
        self.log.append(("send", topic))
        return handle

    def flush(self) -> None:
        self.ack()
        self.log.append(("flush",))

    def settled(self) -> bool:
        return not self._unflushed

    def close(self, timeout: float = 10) -> None:
        self.log.append(("close-producer",))


class FakeConsumer:
    """Returns the scripted polls, then asks the application to stop."""

    def __init__(self, polls: list[dict], log: list[tuple], stop: Any) -> None:
        self.polls = list(polls)
        self.log = log
        self.stop = stop
        self.listener: Any = None
        self.committed: dict[TopicPartition, int] = {}

    def subscribe(self, topics, listener) -> None:
        self.listener = listener

    def poll(self, timeout_ms, max_records):
        if self.listener is not None:  # the first poll joins the group
            self.listener.on_assigned({TopicPartition("in", 0), TopicPartition("in", 1)})
            self.listener = None
        if not self.polls:
            self.stop()
            return {}
        return self.polls.pop(0)

    def commit(self, offsets, timeout_ms) -> None:
        self.committed.update(offsets)
        self.log.append(("commit", dict(offsets)))

    def lag(self, partitions):
        return {}

    def coordinator_known(self) -> bool:
        return True

    def close(self, timeout_ms) -> None:
        self.log.append(("close-consumer",))


class FakeClients:
    bootstrap_servers = "fake:9092"

    def __init__(self, polls: list[dict], fail_topics: tuple[str, ...] = ()) -> None:
        self.log: list[tuple] = []
        self.polls = polls
        self.fail_topics = fail_topics
        self.app: Any = None

    def preflight(self) -> None:
        pass

    def wait_for_topic(self, topic, stop, create_partitions) -> int:
        return 2

    def ensure_topics(self, topics, *, partitions=None, like=None, config=None):
        return []

    def check_copartitioned(self, input_topic, input_partitions, topic) -> None:
        pass

    def consumer(self, **kwargs):
        self.consumer_ = FakeConsumer(self.polls, self.log, self.app.stop)
        return self.consumer_

    def producer(self, *, client_id, stop, retry, on_replaced=None):
        self.producer_ = FakeProducer(self.log, self.fail_topics)
        return self.producer_

    def reader(self, client_id):
        raise AssertionError("no restore in these tests (state_changelog=False)")


def _app(polls: list[dict], fail_topics: tuple[str, ...] = ()) -> tuple[Application, FakeClients]:
    settings = Settings(input_topic="in", metrics_port=-1, state_changelog=False,
                        forecast_every=0, continuation_every=0, commit_interval_s=3600,
                        engine_params=ENGINE)
    fake = FakeClients(polls, fail_topics)
    app = Application(settings, engine=_engine(), registry=CollectorRegistry(), clients=fake)
    fake.app = app
    return app, fake


def test_the_loop_commits_offsets_only_after_the_outputs_were_acknowledged():
    offsets = {0: 0, 1: 0}
    app, fake = _app([_poll(0, 9, offsets=offsets), _poll(9, 9, bad=True, offsets=offsets)])
    assert app.run() == 0
    sent = fake.producer_.sent
    assert [t for t, *_ in sent].count("in.scores") == 18
    assert [t for t, *_ in sent].count("in.dlq") == 2
    assert app.stats.consumed == 20 and app.stats.scored == 18 and app.stats.dead_lettered == 2
    # one commit, at shutdown, of the next offsets; the last flush came before it
    commits = [i for i, e in enumerate(fake.log) if e[0] == "commit"]
    assert len(commits) == 1
    assert fake.log[commits[0]][1] == {TopicPartition("in", 0): 6, TopicPartition("in", 1): 14}
    assert fake.log[commits[0] - 1] == ("flush",)
    assert app.metrics.registry.get_sample_value(
        "streamvgan_producer_records_produced_total", {"topic": "in.scores"}) == 18


def test_the_next_poll_waits_for_records_while_the_broker_acknowledges_the_last_batch(
    monkeypatch,
):
    """The loop sends a batch's outputs and polls again at once; the flush that makes the
    batch's offsets committable comes after that poll (the two round trips overlap), and the
    commit comes only after the flush of the last batch."""

    def poll(self, timeout_ms, max_records):
        self.log.append(("poll", timeout_ms))
        return original(self, timeout_ms, max_records)

    original = FakeConsumer.poll
    monkeypatch.setattr(FakeConsumer, "poll", poll)
    offsets = {0: 0, 1: 0}
    app, fake = _app([_poll(0, 9, offsets=offsets), _poll(9, 9, offsets=offsets)])
    assert app.run() == 0
    steps = [e[0] for e in fake.log]
    sends = [i for i, e in enumerate(steps) if e == "send"]
    first_batch_end = sends[8]  # 9 score records each
    second_batch_start = sends[9]
    flushes = [i for i, e in enumerate(steps) if e == "flush"]
    # batch 1 sent -> poll (returns batch 2) -> flush (batch 1 acknowledged) -> batch 2 sent
    assert steps[first_batch_end + 1] == "poll"
    # a short poll while a batch awaits the broker: with no new records it is settled at once
    # (its offsets and the latency metric do not wait out an idle poll)
    assert fake.log[first_batch_end + 1][1] <= 2
    assert fake.log[steps.index("poll")][1] == app.settings.poll_timeout_ms  # none in flight
    assert first_batch_end + 1 < flushes[0] < second_batch_start
    assert "flush" not in steps[sends[0] : first_batch_end]
    commits = [i for i, e in enumerate(steps) if e == "commit"]
    assert len(commits) == 1 and commits[0] > flushes[-1] > sends[-1]
    assert fake.log[commits[0]][1] == {TopicPartition("in", 0): 6, TopicPartition("in", 1): 12}
    assert app.stats.consumed == 18


def test_a_partition_lost_while_its_batch_awaits_the_broker_is_not_committed(monkeypatch):
    """Partition 1 is lost (evicted from the group) in the poll after a batch that holds its
    records was sent: once that batch is acknowledged, only partition 0's offsets are kept."""
    polls = 0

    def poll(self, timeout_ms, max_records):
        nonlocal polls
        polls += 1
        if polls == 2:  # the batch of poll 1 is sent and not yet acknowledged
            fake.app.loop.on_lost({TopicPartition("in", 1)})
        return original(self, timeout_ms, max_records)

    original = FakeConsumer.poll
    monkeypatch.setattr(FakeConsumer, "poll", poll)
    app, fake = _app([_poll(0, 9)])
    assert app.run() == 0
    commits = [e[1] for e in fake.log if e[0] == "commit"]
    assert commits == [{TopicPartition("in", 0): 3}]


def test_outputs_the_broker_refused_are_never_committed():
    app, fake = _app([_poll(0, 9)], fail_topics=("in.scores",))
    assert app.run() == 1  # fatal: a restart re-reads the batch
    assert not any(e[0] == "commit" for e in fake.log)
    assert fake.consumer_.committed == {}


def test_alerts_are_counted_by_the_signal_that_drove_them():
    # issue 15: streamvgan_scores_anomaly_causes_total{signal} splits the alerts the
    # anomalies counter counts; a value far beyond stream a's range is an "extreme"
    values = [math.sin(i / 4) for i in range(80)]
    values[60] = 20.0
    tp = TopicPartition("in", 0)
    poll = {tp: [Rec("in", 0, i, b"a", _event("a", i, v)) for i, v in enumerate(values)]}
    app, fake = _app([poll])
    assert app.run() == 0
    scores = [json.loads(v) for t, _, v, *_ in fake.producer_.sent if t == "in.scores"]
    assert scores[60]["cause"] == {"signal": "extreme", "field": "value"}
    get = app.metrics.registry.get_sample_value
    by_signal = {s: get("streamvgan_scores_anomaly_causes_total", {"signal": s})
                 for s in ("model", "jump", "level", "extreme")}
    assert by_signal["extreme"] >= 1 and None not in by_signal.values()  # all exported
    assert sum(by_signal.values()) == get("streamvgan_scores_anomalies_total") >= 1
    assert sum(by_signal.values()) == sum(s["anomaly"] for s in scores)


def test_changelog_is_acknowledged_before_the_offsets_are_committed():
    log: list[tuple] = []
    engine = _engine()
    engine.process([Event("a", {"value": 1.0}), Event("b", {"value": 2.0})])
    state = StateStore(engine, ServiceMetrics(CollectorRegistry()))
    state.attach_changelog(StateChangelog("cl", lambda: None))
    state.producer = FakeProducer(log)
    consumer = FakeConsumer([], log, stop=lambda: None)
    state.acknowledged({TopicPartition("in", 0): 5, TopicPartition("in", 1): 3}, {"a": 0, "b": 1})
    state.commit(consumer)
    assert log == [("send", "cl"), ("send", "cl"), ("flush",),
                   ("commit", {TopicPartition("in", 0): 5, TopicPartition("in", 1): 3})]
    assert state.dirty == {} and state.pending == {}

    # a refused changelog record: no commit, the streams stay dirty and the offsets pending
    log.clear()
    state.producer = FakeProducer(log, fail_topics=("cl",))
    state.acknowledged({TopicPartition("in", 0): 9}, {"a": 0})
    with pytest.raises(ProduceError, match="changelog records were not acknowledged"):
        state.commit(consumer)
    assert not any(e[0] == "commit" for e in log)
    assert state.dirty == {"a": 0} and state.pending == {TopicPartition("in", 0): 9}


def test_a_revocation_writes_and_commits_only_the_revoked_partitions():
    log: list[tuple] = []
    engine = _engine()
    engine.process([Event("a", {"value": 1.0}), Event("b", {"value": 2.0})])
    forgotten: list[str] = []
    state = StateStore(engine, ServiceMetrics(CollectorRegistry()), on_forget=forgotten.append)
    state.attach_changelog(StateChangelog("cl", lambda: None))
    state.producer = FakeProducer(log)
    state.acknowledged({TopicPartition("in", 0): 5, TopicPartition("in", 1): 3}, {"a": 0, "b": 1})
    b_state = engine.export_stream("b")
    offsets = state.revoke({TopicPartition("in", 1)}, "in")
    assert offsets == {TopicPartition("in", 1): 3}
    assert log == [("send", "cl"), ("flush",)]
    assert state.producer.sent == [("cl", b"b", b_state, 1)]  # to changelog partition 1
    assert forgotten == ["b"] and engine.streams() == ["a"]  # b's state moved away
    assert state.pending == {TopicPartition("in", 0): 5} and state.dirty == {"a": 0}


def test_the_periodic_commit_sends_the_changelog_a_chunk_per_iteration_then_commits():
    """begin_commit takes the offsets and returns; each loop iteration (advance) exports and
    sends one chunk of states without waiting; the offsets are committed only after the broker
    acknowledged every record, and what was acknowledged meanwhile waits for the next commit.
    The records hold the states as of begin_commit's offsets exactly, not later ones (a stream
    restored after a crash replays from those offsets onto exactly that state)."""
    log: list[tuple] = []
    engine = _engine()
    engine.process([Event(s, {"value": 1.0}) for s in "abc"])
    # one chunk of 2 per step (a zero time budget): the test steps through it
    state = StateStore(engine, ServiceMetrics(CollectorRegistry()), chunk=2, step_budget_s=0)
    state.attach_changelog(StateChangelog("cl", lambda: None))
    state.producer = producer = FakeProducer(log)
    consumer = FakeConsumer([], log, stop=lambda: None)
    tp0, tp1 = TopicPartition("in", 0), TopicPartition("in", 1)
    state.acknowledged({tp0: 5, tp1: 3}, {"a": 0, "b": 1, "c": 1})
    at_commit = [engine.export_stream(s) for s in "abc"]
    state.begin_commit(consumer)
    assert log == []  # nothing sent or committed yet: the loop goes on scoring
    state.advance(consumer)
    assert log == [("send", "cl"), ("send", "cl")]  # the first chunk
    # a batch scored and acknowledged meanwhile: c, not exported yet, is exported before it
    # changes (the scoring processor calls before_change ahead of each engine.process)
    state.before_change(["c"])
    engine.process([Event("c", {"value": 9.0})])
    state.acknowledged({tp0: 7}, {"a": 0})
    state.advance(consumer)
    assert log[2:] == [("send", "cl")]  # the second chunk: all three sent
    assert not any(e[0] == "commit" for e in log)
    state.advance(consumer)
    state.advance(consumer)
    assert log[3:] == []  # the broker has not answered yet: the loop does not wait for it
    producer.ack()
    state.advance(consumer)
    # every record answered: the flush returns at once, then the commit
    assert log[3:] == [("flush",), ("commit", {tp0: 5, tp1: 3})]
    assert state.ticket is None
    assert state.pending == {tp0: 7} and state.dirty == {"a": 0}  # for the next commit
    assert [k for _, k, _, _ in producer.sent] == [b"a", b"b", b"c"]
    assert [v for _, _, v, _ in producer.sent] == at_commit  # c as of the commit, not after

    # a blocking commit (shutdown) finishes whatever is in progress first
    state.begin_commit(consumer)
    state.commit(consumer)
    assert log[5:] == [("send", "cl"), ("flush",), ("commit", {tp0: 7})]


def test_a_changelog_record_refused_during_the_periodic_commit_commits_nothing():
    log: list[tuple] = []
    engine = _engine()
    engine.process([Event("a", {"value": 1.0})])
    state = StateStore(engine, ServiceMetrics(CollectorRegistry()))
    state.attach_changelog(StateChangelog("cl", lambda: None))
    state.producer = FakeProducer(log, fail_topics=("cl",))
    consumer = FakeConsumer([], log, stop=lambda: None)
    state.acknowledged({TopicPartition("in", 0): 4}, {"a": 0})
    state.begin_commit(consumer)
    state.advance(consumer)  # sent; no answer yet
    state.producer.ack()  # the broker refuses it
    with pytest.raises(ProduceError, match="1 changelog records were not acknowledged"):
        state.advance(consumer)
    assert not any(e[0] == "commit" for e in log)
    assert state.pending == {TopicPartition("in", 0): 4} and state.dirty == {"a": 0}


def test_a_crash_or_outage_between_changelog_send_and_ack_commits_nothing():
    """Issue 13's pipelining: the changelog records of a commit are sent without waiting and
    the loop goes on scoring; while the broker has not answered them (an outage) nothing is
    committed however many steps pass, batches scored meanwhile are acknowledged but not
    committed either, and a crash at that point leaves the committed offsets where they were
    (a restart re-reads from there)."""
    log: list[tuple] = []
    engine = _engine()
    state = StateStore(engine, ServiceMetrics(CollectorRegistry()))
    state.attach_changelog(StateChangelog("cl", lambda: None))
    state.producer = producer = FakeProducer(log)
    proc = ScoringProcessor(engine, TOPICS, forecast_every=0, continuation_every=0,
                            continuation_samples=2, alert_threshold=0.99,
                            before_change=state.before_change)
    consumer = FakeConsumer([], log, stop=lambda: None)
    offsets = {0: 0, 1: 0}
    first = proc.process(_poll(0, 30, offsets=offsets))
    state.acknowledged(first.next_offsets, first.touched)
    state.begin_commit(consumer)
    for start in range(30, 130, 10):  # scoring goes on while the broker is silent
        state.advance(consumer)
        batch = proc.process(_poll(start, 10, offsets=offsets))
        assert batch.scored == 10
        state.acknowledged(batch.next_offsets, batch.touched)
    assert [e for e in log if e[0] != "send"] == []  # no flush waited on, nothing committed
    assert len(producer.sent) == 3 and producer.acked == 0
    # a crash now (kill -9): the group's committed offsets are still the initial ones
    assert consumer.committed == {}
    # the broker answers: the next step commits the first batch's offsets, and only those
    producer.ack()
    state.advance(consumer)
    assert consumer.committed == first.next_offsets
    assert state.pending == {TopicPartition("in", 0): 44, TopicPartition("in", 1): 86}


@pytest.mark.parametrize("field_mode", ["channels", "joint"])
def test_changelog_records_keep_their_format_and_restore(field_mode):
    """The changelog's stream records are put together from pieces (issue 13: the JSON header
    was most of their cost); they must stay the bytes ``json.dumps`` of the header gave
    (records already on changelog topics restore; tests/engine/test_persist.py checks one
    of an old engine), restore to an equal state, and a damaged one must be refused."""
    import hashlib

    from streamvgan.engine.persist import stream_from_bytes
    from streamvgan.errors import CheckpointError

    n = 2 if field_mode == "joint" else 1
    engine = StreamEngine(EngineConfig.from_params(**ENGINE, field_mode=field_mode,
                                                   n_features=n), seed=0)
    multi = {"cpu": 1.0, "mém \"x\"": 2.5}
    for t in range(30):
        engine.process([Event("hôst/é\n1", {k: v + t for k, v in multi.items()}),
                        Event("b", {"x": t % 4, "y": 1e9 - t} if n == 2 else {"value": t})])
    for stream in engine.streams():
        blob = engine.export_stream(stream)
        size = int.from_bytes(blob[4:8], "big")
        header = json.loads(blob[8 : 8 + size])
        assert blob[8 : 8 + size] == json.dumps(header, separators=(",", ":")).encode()
        assert list(header) == ["format", "format_version", "stream", "fields", "keys",
                                "model_version", "arrays", "sha256"]
        assert header["sha256"] == hashlib.sha256(blob[8 + size :]).hexdigest()
        twin = StreamEngine(EngineConfig.from_params(**ENGINE, field_mode=field_mode,
                                                     n_features=n), seed=0)
        twin.import_stream(stream, blob)
        assert twin.export_stream(stream) == blob
        damaged = blob[:-3] + bytes([blob[-3] ^ 1]) + blob[-2:]
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            stream_from_bytes(damaged, stream)


def test_a_revocation_during_the_periodic_commit_finishes_it_first():
    log: list[tuple] = []
    engine = _engine()
    engine.process([Event(s, {"value": 1.0}) for s in "ab"])
    state = StateStore(engine, ServiceMetrics(CollectorRegistry()), chunk=1, step_budget_s=0)
    state.attach_changelog(StateChangelog("cl", lambda: None))
    state.producer = FakeProducer(log)
    consumer = FakeConsumer([], log, stop=lambda: None)
    tp0, tp1 = TopicPartition("in", 0), TopicPartition("in", 1)
    state.acknowledged({tp0: 5, tp1: 3}, {"a": 0, "b": 1})
    state.begin_commit(consumer)
    state.advance(consumer)  # a's state sent; b's not yet
    offsets = state.revoke({tp1}, "in")
    assert offsets == {tp1: 3}  # committed by the client before partition 1 moves
    assert [k for _, k, _, _ in state.producer.sent] == [b"a", b"b"]  # b's state written
    assert state.pending == {tp0: 5} and state.ticket is None


def test_the_scoring_processor_exports_a_pending_state_before_changing_it():
    """Wired by the Application: a stream whose state a commit in progress has not exported
    yet is exported before the batch that changes it is scored."""
    settings = Settings(input_topic="in", metrics_port=-1, engine_params=ENGINE)
    engine = _engine()
    app = Application(settings, engine=engine, registry=CollectorRegistry(),
                      clients=FakeClients([]))
    engine.process([Event("a", {"value": 1.0})])
    state = app.state
    state.attach_changelog(StateChangelog("cl", lambda: None))
    state.acknowledged({TopicPartition("in", 0): 1}, {"a": 0})
    before = engine.export_stream("a")
    state.begin_commit(FakeConsumer([], [], stop=lambda: None))
    app.processor.process(_poll(0, 3))  # a, b, c: a changes
    assert engine.export_stream("a") != before
    assert state.ticket.states == [("a", 0, before)] and state.ticket.todo == {}


class FakeChangelogReader:
    """The changelog restore's group-less reader over what ``producer`` sent to ``topic`` and
    the broker acknowledged (in send order, offsets per partition from 0)."""

    def __init__(self, producer: FakeProducer, topic: str) -> None:
        self.parts: dict[int, list[Rec]] = {}
        sent = zip(producer.sent[: producer.acked], producer.headers)
        for (t, key, value, partition), headers in sent:
            if t == topic:
                part = self.parts.setdefault(partition, [])
                part.append(Rec(t, partition, len(part), key, value, list(headers or [])))
        self.assigned: list[Any] = []
        self.read = False

    def partitions_for_topic(self, topic):
        return {0, 1}

    def assign(self, tps) -> None:
        self.assigned = list(tps)

    def seek_to_beginning(self, *tps) -> None:
        self.read = False

    def end_offsets(self, tps):
        return {tp: len(self.parts.get(tp.partition, [])) for tp in tps}

    def poll(self, timeout_ms):
        if self.read:
            return {}
        self.read = True
        return {tp: self.parts[tp.partition] for tp in self.assigned if tp.partition in self.parts}

    def position(self, tp) -> int:
        return len(self.parts.get(tp.partition, [])) if self.read else 0

    def close(self) -> None:
        pass


def _scores(result) -> list[tuple[bytes, bytes]]:
    return [(o.key, o.value) for o in result.outputs if o.topic == TOPICS.scores]


def _service(engine: StreamEngine, log: list[tuple], restore_from: FakeProducer | None = None
             ) -> tuple[ScoringProcessor, StateStore, FakeProducer]:
    """A processor and its commit order as the Application wires them (one changelog chunk
    per step); the changelog restores from what ``restore_from`` sent to it."""
    state = StateStore(engine, ServiceMetrics(CollectorRegistry()), chunk=1, step_budget_s=0)
    producer = FakeProducer(log)
    source = restore_from or producer
    state.attach_changelog(StateChangelog("cl", lambda: FakeChangelogReader(source, "cl")))
    state.producer = producer
    proc = ScoringProcessor(engine, TOPICS, forecast_every=0, continuation_every=0,
                            continuation_samples=2, alert_threshold=0.99,
                            before_change=state.before_change,
                            already_applied=state.already_applied)
    return proc, state, producer


@pytest.mark.parametrize("scored_during_commit", [False, True])
def test_a_kill_9_after_the_changelog_acks_applies_each_event_once(scored_during_commit):
    """The window of issue 13's closing note: the changelog records of a commit are
    acknowledged, then the process dies before the offsets are committed. The restarted
    service restores states that already hold the events after the committed offsets; each
    record says up to which input offset (its header), and those events are skipped. Every
    stream ends with the state of a twin that saw each event once, byte for byte, and every
    score record equals the twin's. Events scored while the commit was in progress are not in
    any record (exported before they changed the streams), so they are applied again: once in
    the state, their scores sent twice with the same bytes (at least once)."""
    offsets = {0: 0, 1: 0}
    # 6 polls of 30 events, 10 per stream each (a on partition 0, b and c on 1)
    polls = [_poll(30 * k, 30, offsets=offsets) for k in range(6)]
    log: list[tuple] = []
    proc, state, producer = _service(_engine(), log)
    consumer = FakeConsumer([], log, stop=lambda: None)

    def run(proc: ScoringProcessor, state: StateStore, poll: dict) -> Any:
        result = proc.process(poll)
        state.acknowledged(result.next_offsets, result.touched)  # outputs acknowledged
        return result

    first: list[tuple[bytes, bytes]] = []
    for poll in polls[:2]:
        first += _scores(run(proc, state, poll))
    state.commit(consumer)  # changelog, then offsets: the group's position is after poll 1
    committed = dict(consumer.committed)
    assert committed == {TopicPartition("in", 0): 20, TopicPartition("in", 1): 40}
    for poll in polls[2:4]:
        first += _scores(run(proc, state, poll))
    state.begin_commit(consumer)  # the periodic commit of polls 2-3
    state.advance(consumer)  # a's record sent; b's and c's not yet exported
    if scored_during_commit:  # b and c are exported as of the commit before poll 4 changes them
        first += _scores(run(proc, state, polls[4]))
    while state.ticket.todo or state.ticket.sent < len(state.ticket.states):
        state.advance(consumer)
    producer.ack()  # every changelog record acknowledged; kill -9 before the step that commits
    assert consumer.committed == committed
    ticket_records = producer.headers[-3:]
    assert [dict(h)["streamvgan.state.input-offset"] for h in ticket_records] == [
        b"40", b"80", b"80"]  # the offsets after poll 3 (a on partition 0; b, c on 1)

    # the restart: a fresh engine, the changelog restored, the records re-read from `committed`
    restarted = _engine()
    proc2, state2, _ = _service(restarted, [], restore_from=producer)
    state2.assign({TopicPartition("in", 0), TopicPartition("in", 1)})
    state2.restore_assigned()
    assert state2.already_applied == {"a": (0, 40), "b": (1, 80), "c": (1, 80)}
    second: list[tuple[bytes, bytes]] = []
    skipped = 0
    for poll in polls[2:]:
        result = run(proc2, state2, poll)
        second += _scores(result)
        skipped += result.already_applied
        assert result.next_offsets == {tp: recs[-1].offset + 1 for tp, recs in poll.items()}
    assert skipped == 60  # polls 2 and 3: in the restored states
    assert state2.already_applied == {} and state2._replay_until == {}  # nothing kept after

    twin = _engine()
    twin_proc = ScoringProcessor(twin, TOPICS, forecast_every=0, continuation_every=0,
                                 continuation_samples=2, alert_threshold=0.99)
    twin_scores = [_scores(twin_proc.process(poll)) for poll in polls]
    expected = Counter(sum(twin_scores, []))
    if scored_during_commit:
        expected += Counter(twin_scores[4])  # applied once, sent twice with the same bytes
    assert Counter(first + second) == expected
    assert sum(expected.values()) == 180 + 30 * scored_during_commit
    for stream in "abc":
        assert restarted.export_stream(stream) == twin.export_stream(stream), stream
    assert len({json.loads(v)["score"] for _, v in second}) > 30  # scores that tell states apart

    # without the skip (the gap this closes), polls 2-3 are applied twice: the states differ
    again = _engine()
    proc3, state3, _ = _service(again, [], restore_from=producer)
    state3.assign({TopicPartition("in", 0), TopicPartition("in", 1)})
    state3.restore_assigned()
    proc3.already_applied = {}
    for poll in polls[2:]:
        run(proc3, state3, poll)
    assert all(again.export_stream(s) != twin.export_stream(s) for s in "abc")


@pytest.mark.parametrize("header", [None, b"not-an-offset"])
def test_a_changelog_record_without_the_input_offset_restores_and_skips_nothing(header, caplog):
    """Records written before the input offset was a header (or with a damaged one) restore
    as before: the state is installed, and every re-read event is applied again."""
    def processor(engine: StreamEngine) -> ScoringProcessor:
        return ScoringProcessor(engine, TOPICS, forecast_every=0, continuation_every=0,
                                continuation_samples=2, alert_threshold=0.99)

    engine = _engine()
    poll = _poll(0, 30)
    processor(engine).process(poll)
    old = FakeProducer([])
    changelog = StateChangelog("cl", lambda: None)
    changelog.send(old, changelog.export(engine, {"a": 0, "b": 1, "c": 1}))  # no offsets
    assert old.headers == [[("streamvgan.state.schema", b"1")]] * 3  # the records of before
    if header is not None:
        old.headers = [[*h, ("streamvgan.state.input-offset", header)] for h in old.headers]
    old.ack()

    restarted = _engine()
    proc, state, _ = _service(restarted, [], restore_from=old)
    state.assign({TopicPartition("in", 0), TopicPartition("in", 1)})
    with caplog.at_level("WARNING", logger="streamvgan.service.changelog"):
        state.restore_assigned()
    assert state.already_applied == {}
    assert len(caplog.records) == (3 if header is not None else 0)  # one per damaged record
    for stream in "abc":
        assert restarted.export_stream(stream) == engine.export_stream(stream)  # installed
    result = proc.process(poll)  # re-read from the start: applied again, nothing skipped
    assert result.already_applied == 0 and result.scored == 30
    twice = _engine()
    processor(twice).process(poll)
    processor(twice).process(poll)
    for stream in "abc":
        assert restarted.export_stream(stream) == twice.export_stream(stream)
