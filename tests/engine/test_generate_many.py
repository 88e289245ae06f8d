"""Continuations of many streams from one run of the network (what the service does with the
streams due in a poll): one stream's draws equal generate()'s; several come back per stream,
each around its own level and in its own fields."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.errors import InvalidInputError


def _engine(fitted: bool) -> StreamEngine:
    engine = StreamEngine(EngineConfig(init="pretrained" if fitted else "random",
                                       warmup_events=10**9), seed=5)
    for t in range(120):
        engine.process([
            Event("low", {"value": math.sin(t / 5)}),
            Event("high", {"value": 1e6 + 1e3 * math.cos(t / 7)}),
            Event("pair", {"cpu": 50 + math.sin(t / 3), "mem": -200 + math.cos(t / 4)}),
        ])
    return engine


@pytest.mark.parametrize("fitted", [True, False])  # the network, or the cold-start draws
def test_one_stream_draws_as_generate_and_many_stay_apart(fitted):
    a, b = _engine(fitted), _engine(fitted)
    assert (a.model_version > 0) == fitted
    np.testing.assert_array_equal(a.generate_many(["pair"], 6, 4)[0], b.generate("pair", 6, 4))
    low, high, pair = a.generate_many(["low", "high", "pair"], 6, 200)
    assert low.shape == high.shape == (200, 6, 1) and pair.shape == (200, 6, 2)
    assert abs(np.median(low)) < 5  # each around its own level: no rows swapped
    assert abs(np.median(high) - 1e6) < 5e4
    assert abs(np.median(pair[..., 0]) - 50) < 10 and abs(np.median(pair[..., 1]) + 200) < 10
    assert a.generate_many([], 6, 4) == []
    with pytest.raises(InvalidInputError, match="n_samples"):
        a.generate_many(["low"], 6, 0)
