"""The one-value path (streamvgan.engine.scalar, Python floats) gives what the vectorised path
gives, event by event: scores, components and every array of the state. Both run the same
recipe; the one-value path exists for speed at one event per call (issue 13).

Every state array ends bit for bit equal; scores to 1e-12: the normal distribution function
comes from torch in one path and from math.erfc in the other (2.2e-16 apart at most, seen)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamvgan.engine import EngineConfig, Event, StreamEngine

TINY = dict(init="random", warmup_events=120, first_fit_steps=6, fit_steps=3, fit_every=80)


def _series(seed: int, n: int) -> list[float]:
    """A sine with noise, a spike, a level shift and a stretch of constant values."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        x = 10 + 3 * math.sin(t / 6) + rng.normal(scale=0.3)
        x += 15.0 if t == 200 else 0.0
        x += 8.0 if t > 320 else 0.0
        out.append(5.0 if 260 <= t < 280 else x)
    return out


def _run(config: EngineConfig, seed: int, scalar: bool, river_way: bool):
    engine = StreamEngine(config, seed=seed)
    engine.scalar_path = scalar
    scores = []
    for t, x in enumerate(_series(seed, 420)):
        event = Event("s", {"value": x}, t)
        if river_way:  # score, then learn with the memo, as the River adapter does
            scored = engine.assess([event])
            scores.append(scored.scores[0])
            engine.process([event], scored)
        else:
            scores.append(engine.process([event])[0])
        engine.fine_tune()
    return engine, scores


@pytest.mark.parametrize(
    ("params", "seed", "river_way"),
    [
        ({}, 0, False),
        ({"season_window": 96, "alert_cooldown": 10}, 1, True),
        ({"adversarial": False, "range_tolerance": None}, 2, False),
        ({"model_signal": "predictive"}, 3, True),
        ({"model_signal": "forecast_error", "alert_cooldown": 10}, 6, False),
        ({"anomalous_calibration_weight": 0.1, "alert_cooldown": 10}, 4, False),
        ({"reference_events": 100, "anomalous_calibration_weight": 0.1}, 5, True),  # fit at 120
    ],
)
def test_one_value_path_equals_the_vectorised_path(params, seed, river_way):
    model = {k: params.pop(k) for k in list(params) if k in ("adversarial",)}
    config = EngineConfig(**TINY, **params).with_model(hidden_size=8, **model)
    fast, fast_scores = _run(config, seed, True, river_way)
    slow, slow_scores = _run(config, seed, False, river_way)
    assert fast.model_version >= 3  # cold start, then several fits: both branches ran
    assert max(s.score for s in slow_scores) > 0.99  # the spike and the shift scored high
    for a, b in zip(fast_scores, slow_scores):
        assert a.warm == b.warm and a.model_version == b.model_version
        assert a.score == pytest.approx(b.score, rel=1e-12, abs=1e-12)
        assert a.raw == pytest.approx(b.raw, rel=1e-12, abs=1e-12)
        for k in a.components:
            assert a.components[k] == pytest.approx(b.components[k], rel=1e-12, abs=1e-12)
        assert a.cause == b.cause  # the signal (and field) that drove the score, issue 15
        assert a.fields is None and b.fields is None  # one field: no per-field scores
    # the series has a spike, a level shift and a constant stretch: several causes, none early
    assert all(s.cause is None for s in slow_scores[:20])
    assert len({s.cause.signal for s in slow_scores[20:]}) >= 3
    for name, arr in fast.state.arrays.items():
        np.testing.assert_array_equal(arr, slow.state.arrays[name], err_msg=name)
