"""A kill -9 between the changelog acknowledgements and the offset commit, on the real broker.

Issue 13's closing note: the changelog can be acknowledged while the offsets are not yet
committed, so a restart re-reads events that the restored states already hold. Each changelog
record now carries the input offset its state was exported at, and the restarted service skips
those events (``streamvgan/service/state.py``). Here the first service's offset commits never
reach the broker (its consumer drops them, as a kill -9 right after the changelog acks would):
its periodic commits and its shutdown commit write the changelog, the group's offsets stay
uncommitted. A second service on the same group restores, re-reads everything, and must score
each input event exactly once and end with the state of a twin engine that saw each event once.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.service.app import Application, make_clients
from streamvgan.service.changelog import StateChangelog, changelog_topic
from streamvgan.service.clients import make_consumer
from streamvgan.service.settings import Settings
from streamvgan.service.wire import ScoreMessage
from waiting import wait_until

pytestmark = pytest.mark.kafka

WAIT_S = 120  # bound on every wait; a loaded 2-core machine needs tens of seconds at worst
ENGINE = {"init": "random", "hidden_size": 8, "latent_size": 2, "warmup_events": 10**9}
STREAMS = [f"s{k}" for k in range(6)]  # over both input partitions (keyed by stream)
THRESHOLD = 0.99


def _engine() -> StreamEngine:
    return StreamEngine(EngineConfig.from_params(**ENGINE), seed=0)


def _events(start: int, stop: int) -> list[Event]:
    """Rounds ``start..stop-1``: one event of every stream per round."""
    return [Event(s, {"value": math.sin(t / 5 + k) + k}, ts=t)
            for t in range(start, stop) for k, s in enumerate(STREAMS)]


def _records(events: list[Event]) -> list[tuple[bytes, bytes]]:
    return [(e.stream.encode(), json.dumps({"stream": e.stream, "ts": e.ts,
                                            "value": e.values["value"]}).encode())
            for e in events]


class _DroppedCommits:
    """A consumer whose offset commits never reach the broker (they are only recorded)."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self.dropped: list[dict] = []

    def commit(self, offsets, timeout_ms) -> None:
        self.dropped.append(dict(offsets))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class _KilledBeforeCommits:
    """The service's client factory, with consumers of :class:`_DroppedCommits`."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self.consumers: list[_DroppedCommits] = []

    def consumer(self, **kwargs: Any) -> _DroppedCommits:
        consumer = _DroppedCommits(self._factory.consumer(**kwargs))
        self.consumers.append(consumer)
        return consumer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)


def _wait(predicate, what: str):
    return wait_until(predicate, what, WAIT_S, 0.1)


def test_a_restart_after_changelog_acks_without_the_commit_scores_each_event_once(
    kafka, kafka_client
):
    topic = kafka.topic("kill9", partitions=2)
    settings = Settings(
        bootstrap_servers=kafka.bootstrap_servers, input_topic=topic,
        group_id=kafka.group("kill9"), kafka_client=kafka_client, metrics_port=-1,
        commit_interval_s=0.3, forecast_every=0, continuation_every=0,
        alert_threshold=THRESHOLD, engine_params=ENGINE,
    )
    first_events, later_events = _events(0, 25), _events(25, 50)  # 150 each

    # the first service: every commit writes the changelog, then its offsets are dropped
    crashing = _KilledBeforeCommits(make_clients(settings))
    app = Application(settings, engine=_engine(), registry=CollectorRegistry(),
                      clients=crashing).start()
    try:
        assert app.wait_started(WAIT_S)
        kafka.produce(topic, _records(first_events[:72]))
        _wait(lambda: app.stats.scored >= 72, "the first service's scores")
        # a periodic commit: changelog records of a ticket acknowledged, the offsets dropped
        _wait(lambda: any(c.dropped for c in crashing.consumers), "a periodic commit")
        kafka.produce(topic, _records(first_events[72:]))
        _wait(lambda: app.stats.scored >= len(first_events), "the first service's scores")
    finally:
        app.stop()
        assert app.join(WAIT_S) == 0
    assert app.stats.scored == len(first_events)
    assert sum(len(c.dropped) for c in crashing.consumers) >= 2  # the periodic, the shutdown
    assert kafka.committed(topic, settings.group_id, 2) == {0: None, 1: None}

    # the restart: the same group re-reads from the beginning onto the restored states
    registry = CollectorRegistry()
    app = Application(settings, engine=_engine(), registry=registry).start()
    try:
        assert app.wait_started(WAIT_S)
        kafka.produce(topic, _records(later_events))
        n = len(first_events) + len(later_events)
        _wait(lambda: app.stats.consumed >= n, "the restarted service to read every record")
    finally:
        app.stop()
        assert app.join(WAIT_S) == 0
    assert app.stats.consumed == 300 and app.stats.scored == 150  # the first 150 skipped
    assert registry.get_sample_value("streamvgan_state_events_already_applied_total") == 150

    twin = _engine()
    expected = {(e.stream, e.ts): json.loads(ScoreMessage.from_score(s, e.ts, THRESHOLD)
                                             .to_bytes())
                for e, s in zip(first_events + later_events,
                                twin.process(first_events + later_events))}
    scores = kafka.read(settings.scores_topic, 300, timeout_s=WAIT_S, settle_s=2.0)
    got = [json.loads(r.value) for r in scores]
    keys = [(m["stream"], m["ts"]) for m in got]
    assert len(keys) == 300 and len(set(keys)) == 300  # one score record per input event
    assert {(m["stream"], m["ts"]): m for m in got} == expected  # number for number
    assert len({m["score"] for m in got}) > 100  # scores that tell the states apart

    # the state the changelog holds now (what a third start restores) is the twin's
    restored = _engine()
    changelog = StateChangelog(changelog_topic(settings.group_id, topic),
                               lambda: make_consumer(kafka.bootstrap_servers))
    report = changelog.restore(restored, [0, 1])
    assert report.restored == len(STREAMS)
    for stream in STREAMS:
        assert restored.export_stream(stream) == twin.export_stream(stream), stream
    # each record carries the end of its partition: all 50 events of its streams were applied
    ends = {p: 50 * len([s for s in STREAMS if s in part]) for p, part in report.applied.items()}
    assert sorted(s for part in report.applied.values() for s in part) == STREAMS
    assert all(offset == ends[p] for p, part in report.applied.items()
               for offset in part.values()), report.applied
