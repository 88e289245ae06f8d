"""Model versions stay monotonic across a kill -9 before the first checkpoint (issue 11, item
7): the stream states restored from the changelog topic carry the version they were written
under, and the restarted process's first fit numbers above it, not from 1 again."""

from __future__ import annotations

import math

import pytest

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.service.changelog import StateChangelog
from streamvgan.service.clients import make_consumer, make_producer

pytestmark = pytest.mark.kafka

TINY = EngineConfig(init="random", warmup_events=100, first_fit_steps=5, fit_steps=2, fit_every=50).with_model(
    hidden_size=8
)


def _run(engine: StreamEngine, n: int, start: int = 0) -> None:
    for t in range(start, start + n):
        engine.process([Event(s, {"value": math.sin(t / 3 + k)}) for k, s in enumerate("abc")])
        engine.fine_tune()


def test_versions_continue_after_a_restart_that_lost_the_weights(kafka):
    topic = kafka.topic("changelog", partitions=1)
    first = StreamEngine(TINY, seed=0)
    _run(first, 300)
    assert first.model_version >= 3  # first fit at 100 events, then every 50
    producer = make_producer(kafka.bootstrap_servers)
    StateChangelog(topic, lambda: make_consumer(kafka.bootstrap_servers)).write(
        producer, first, {"a": 0, "b": 0, "c": 0})
    producer.flush()
    producer.close()

    # kill -9 before any checkpoint: a new process starts cold, restores the changelog
    restarted = StreamEngine(TINY, seed=0)
    report = StateChangelog(topic, lambda: make_consumer(kafka.bootstrap_servers)).restore(
        restarted, [0])
    assert report.restored == 3 and restarted.model_version == 0
    _run(restarted, 40, start=300)  # 120 events: the first fit (at 100), not the second (150)
    assert restarted.model_version == first.model_version + 1  # not 1 again


def test_an_explicit_version_is_kept_and_the_floor_only_raises():
    engine = StreamEngine(TINY, seed=0)
    engine.raise_version_floor(7)
    engine.raise_version_floor(3)
    control = StreamEngine(TINY, seed=0)
    _run(engine, 90)
    _run(control, 90)
    assert control.model_version >= 1
    assert engine.model_version == control.model_version + 7  # 8, 9, ... instead of 1, 2, ...
    engine.install_weights(engine.model.state_dict(), version=2)  # a model topic says 2
    assert engine.model_version == 2
