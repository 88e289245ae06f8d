"""The forecast combines the network with persistence (and, where a season is known, the value
one season back), weighted by the inverse of their recent squared errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.engine.forecast import _seasonal_forms
from streamvgan.engine.stats import (
    find_season,
    season_search_due,
    season_search_due_one,
    seasonal_period,
)
from streamvgan.errors import ConfigurationError

TINY = EngineConfig(init="random", warmup_events=150, first_fit_steps=10, fit_steps=3, fit_every=10_000).with_model(
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_blend_on_a_random_walk_is_close_to_persistence_and_better_than_the_network(
    one_torch_thread,
):
    # on a random walk the last value is the best forecast; a small network fitted on 150
    # points lags it, and the blend should learn to lean on persistence
    values = random_walk(700, seed=1)
    _, mae_blend = run(TINY, values, start=300)
    _, mae_network = run(replace(TINY, forecast_blend=False), values, start=300)
    mae_last = float(np.mean(np.abs(np.diff(values[299:]))))
    # walk and engine seeds 0-7: blend / network 0.036-0.143, blend / last value 0.997-1.186
    # (the old 1.25 left seed 1 a margin of 0.06); 1.4 still means "near persistence"
    assert mae_blend < mae_network
    assert mae_blend < 1.4 * mae_last


def test_the_blend_without_the_network_is_the_last_value_where_no_season_is_known():
    """``forecast_network=False`` (the ablation of docs/pretraining.md) gives the network's
    forecast weight 0: with no season the blend is the last value at every step."""
    values = random_walk(200)
    fitted = EngineConfig(season_window=0, fit_every=10**9)  # the shipped network, served at once
    without, _ = run(replace(fitted, forecast_network=False), values, start=200)
    with_network, _ = run(fitted, values, start=200)
    assert without.model_version == with_network.model_version == 1
    mean = np.asarray(without.forecast(["s"])[0].mean[:, 0])
    assert np.array_equal(mean, np.full_like(mean, values[-1]))
    assert not np.array_equal(np.asarray(with_network.forecast(["s"])[0].mean[:, 0]), mean)


def test_the_network_left_out_needs_the_blend():
    with pytest.raises(ConfigurationError, match="forecast_network=False"):
        EngineConfig(forecast_blend=False, forecast_network=False)
    with pytest.raises(ConfigurationError, match="forecast_network"):
        EngineConfig(forecast_network="no")


def test_forecast_blend_must_be_a_bool():
    with pytest.raises(ConfigurationError, match="forecast_blend"):
        EngineConfig(forecast_blend="yes")


def _multi_step_mae(config: EngineConfig, values: np.ndarray, origins: range) -> float:
    """Mean absolute error of the 1..H-step forecasts made at ``origins``."""
    engine, errors = StreamEngine(config, seed=0), []
    h = config.horizon
    for t, v in enumerate(values):
        if t in origins:
            errors.append(np.abs(engine.forecast(["s"])[0].mean[:, 0] - values[t:t + h]).mean())
        engine.process([Event("s", {"value": float(v)})])
        engine.fine_tune()
    return float(np.mean(errors))


@pytest.mark.slow
def test_a_known_season_joins_the_blend_as_the_value_one_season_back(one_torch_thread):
    # a square wave of period 40 with a little noise: the value one season back forecasts
    # every step ahead; neither the last value nor a network fitted on 150 points does
    rng = np.random.default_rng(0)
    t = np.arange(900)
    values = 10.0 + 5.0 * ((t % 40) < 20) + 0.1 * rng.normal(size=len(t))
    origins = range(700, 880, 3)
    seasonal = replace(TINY, season_window=200)
    mae_season = _multi_step_mae(seasonal, values, origins)
    mae_plain = _multi_step_mae(TINY, values, origins)
    mae_snaive = float(np.mean([np.abs(values[o - 40:o - 40 + 12] - values[o:o + 12]).mean()
                                for o in origins]))
    engine = StreamEngine(seasonal, seed=0)
    for v in values[:700]:
        engine.process([Event("s", {"value": float(v)})])
    assert engine.state.period[engine.state.slots_of("s")["value"], 0] == 40
    # measured: 0.097 with the season, 1.789 without, 0.097 for the seasonal-naive forecast.
    # Noise and engine seeds 0-7: with / without the season 0.054-0.073, with the season /
    # seasonal-naive 0.995-1.008
    assert mae_season < 0.12 * mae_plain
    assert mae_season < 1.2 * mae_snaive


@pytest.mark.parametrize("season_window", [0, 64])
def test_forecasts_of_many_streams_at_once_equal_one_at_a_time(season_window):
    """engine.forecast(streams) computes every channel in one pass (the service asks for all
    due streams of a poll at once); each stream's forecast must equal asking for it alone,
    bit for bit: with and without a season, a fitted and a not yet served stream, two fields."""
    config = replace(TINY, warmup_events=120, season_window=season_window)
    engine = StreamEngine(config, seed=0)
    t = np.arange(300)
    square = np.where((t // 8) % 2 == 0, 1.0, -1.0)  # period 16: a season to find
    for i in range(300):
        engine.process(
            [
                Event("square", {"value": float(square[i])}),
                Event("walk", {"value": float(random_walk(300)[i])}),
                Event("host", {"cpu": float(np.sin(i / 5)), "mem": float(i % 7)}),
            ]
        )
        engine.fine_tune()
    engine.process([Event("new", {"value": 3.0})])  # a stream with a single value
    assert engine.model_version >= 1
    streams = ["square", "walk", "host", "new"]
    together = engine.forecast(streams)
    alone = [engine.forecast([s])[0] for s in streams]
    assert [f.stream for f in together] == streams
    for a, b in zip(together, alone):
        assert a.fields == b.fields
        np.testing.assert_array_equal(a.mean, b.mean)
        for q in a.quantiles:
            np.testing.assert_array_equal(a.quantiles[q], b.quantiles[q])
    # the network and the blend were in play: the square's forecast is not persistence
    assert not np.allclose(together[0].mean[:, 0], square[-1])
    assert engine.forecast([]) == []


def test_a_season_under_a_trend_is_found_from_the_first_differences():
    t = np.arange(96)
    trend_and_season = 3.0 * t + 20 * np.sin(2 * np.pi * t / 12)
    assert seasonal_period(trend_and_season) == 0  # the trend hides it from the levels
    assert find_season(trend_and_season) == 12
    noise = np.random.default_rng(0).normal(size=600)
    assert find_season(noise) == 0 and find_season(np.cumsum(noise)) == 0


def test_a_season_is_first_looked_for_after_48_96_and_192_values():
    counts = np.arange(1, 1300)
    due = season_search_due(counts, 600)
    assert counts[due].tolist() == [48, 96, 192, 300, 600, 900, 1200]
    assert [c for c in counts if season_search_due_one(int(c), 600)] == counts[due].tolist()
    # a ring shorter than an early search point waits for its half-window searches
    assert counts[season_search_due(counts, 64)][:3].tolist() == [32, 48, 64]


def test_seasonal_forms_follow_a_trend_and_average_out_noise():
    t = np.arange(120.0)
    # a season riding on a trend: the value a season back plus the last season-on-season
    # change is exact; the value a season back alone lags by one season's growth (24)
    ring = 2.0 * t + 10.0 * np.sin(2 * np.pi * t / 12)
    mean, err = _seasonal_forms(ring, 12, 12)
    future = 2.0 * (t[-1] + np.arange(1, 13)) + 10.0 * np.sin(2 * np.pi * (t[-1] + np.arange(1, 13)) / 12)
    np.testing.assert_allclose(mean, future, atol=1e-9)
    assert np.all(err < 1e-12)
    # a repeating profile under noise: the mean of a few seasons beats the value a season
    # back (expected squared error (1 + 1/k) sigma^2 against 2 sigma^2)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        noisy = np.tile(np.arange(10.0), 60) + rng.normal(size=600)
        _, err = _seasonal_forms(noisy, 10, 10)
        naive_err = np.mean((noisy[10:] - noisy[:-10]) ** 2)  # about 2
        # seeds 0-4: err / naive 0.60-0.68 (k = 4: 0.625 expected)
        assert np.all(err < 0.8 * naive_err)
    # fewer than 8 past origins measure no form: infinite error (weight 0 in the blend)
    assert np.all(np.isinf(_seasonal_forms(ring[:20], 12, 12)[1]))


def test_a_short_trending_seasonal_series_gets_its_season_into_the_forecast(one_torch_thread):
    # 144 monthly values like airline passengers: a multiplicative season of 12 on a trend.
    # The season is found after 48 values (before: only after 300, i.e. never) and the
    # forecast from then on beats both seasonal naive and the engine without a season ring.
    t = np.arange(144)
    ratios = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        values = (100 + 2.0 * t) * (1 + 0.2 * np.sin(2 * np.pi * t / 12)) + rng.normal(0, 2, 144)
        origins = range(60, 132, 2)
        config = EngineConfig(season_window=600).with_model(horizon=12)
        mae_season = _multi_step_mae(config, values, origins)
        mae_plain = _multi_step_mae(replace(config, season_window=0), values, origins)
        mae_snaive = float(np.mean([np.abs(values[o - 12:o] - values[o:o + 12]).mean() for o in origins]))
        ratios.append((mae_season / mae_snaive, mae_season / mae_plain))
    # noise seeds 0-7: against seasonal naive 0.333-0.376, against no season 0.132-0.149
    assert all(a < 0.5 and b < 0.25 for a, b in ratios), ratios
