"""The forecast combines the network with persistence, weighted by their recent one-step errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.errors import ConfigurationError

TINY = EngineConfig(warmup_events=150, first_fit_steps=10, fit_steps=3, fit_every=10_000).with_model(
    hidden_size=8
)


def random_walk(n: int, seed: int = 0) -> np.ndarray:
    return 100.0 + np.cumsum(np.random.default_rng(seed).normal(size=n))


def run(config: EngineConfig, values: np.ndarray, start: int) -> tuple[StreamEngine, float]:
    """Feed ``values``; from ``start`` on, the mean absolute error of the one-step forecasts."""
    engine = StreamEngine(config, seed=0)
    errors = []
    for t, v in enumerate(values):
        if t >= start:
            errors.append(abs(engine.forecast(["s"])[0].mean[0, 0] - v))
        engine.process([Event("s", {"value": float(v)})])
        engine.fine_tune()
    return engine, float(np.mean(errors)) if errors else float("nan")


def test_forecast_is_the_error_weighted_mix_of_network_and_last_value():
    values = random_walk(400)
    blended, _ = run(TINY, values, start=400)
    plain, _ = run(replace(TINY, forecast_blend=False), values, start=400)
    assert blended.model_version == plain.model_version == 1
    slot = blended.state.slots_of("s")["value"]
    e_m, e_l = float(blended.state.err_model[slot, 0]), float(blended.state.err_last[slot, 0])
    assert e_m > 0 and e_l > 0
    w = e_l / (e_m + e_l)
    network = np.asarray(plain.forecast(["s"])[0].mean[:, 0])
    mix = np.asarray(blended.forecast(["s"])[0].mean[:, 0])
    np.testing.assert_allclose(mix, w * network + (1 - w) * values[-1], rtol=1e-6)


def test_blend_on_a_random_walk_is_close_to_persistence_and_better_than_the_network():
    # on a random walk the last value is the best forecast; a small network fitted on 150
    # points lags it, and the blend should learn to lean on persistence
    values = random_walk(700, seed=1)
    _, mae_blend = run(TINY, values, start=300)
    _, mae_network = run(replace(TINY, forecast_blend=False), values, start=300)
    mae_last = float(np.mean(np.abs(np.diff(values[299:]))))
    assert mae_blend < mae_network
    assert mae_blend < 1.25 * mae_last


def test_forecast_blend_must_be_a_bool():
    with pytest.raises(ConfigurationError, match="forecast_blend"):
        EngineConfig(forecast_blend="yes")
