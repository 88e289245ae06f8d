"""What the engine must do on data with a known answer: forecast a noisy sine better than the
last value, rank injected anomalies above normal points, and sample realistic continuations.

One engine learns four streams for 2,400 steps (module fixture); each test reads its numbers.

The bounds come from the spread over seeds, not from one run: the same numbers were measured
with data and engine seeds 0-7 (torch 2.13 CPU, one thread), and each bound keeps a margin
beyond the worst of them. A different machine (other CPU kernels, another thread count)
changes the float rounding and so the trained model much as another seed does. The old
continuation bound (sd within 15%) sat inside that spread: seed 0 gives an sd 18.8% above the
data's, as on the 2-core machine of issue 11 (0.13125 / 0.69815), while seeds 0-7 range from
1.7% to 19.0%. The fixture pins torch to one thread, so OMP_NUM_THREADS does not matter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamvgan.engine import EngineConfig, Event, StreamEngine

pytestmark = pytest.mark.slow  # one engine learns four streams for 2,400 steps

N = 2400
PERIOD = 40
NAMES = ["clean", "spike", "shift", "flat"]
SPIKES = [1500, 1800, 2100]
SHIFT_AT = 1900
FLAT = slice(1900, 1960)
FORECAST_FROM = 2000
HELD_BACK = 400


def _sine(n_points: int, phase: float, rng: np.random.Generator, start: int = 0) -> np.ndarray:
    t = np.arange(start, start + n_points)
    return np.sin(2 * np.pi * t / PERIOD + phase) + 0.1 * rng.normal(size=n_points)


@pytest.fixture(scope="module")
def run():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the seed sweep behind the bounds ran on one thread
    try:
        yield _train(seed=0)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int):
    rng = np.random.default_rng(seed)
    series = {name: _sine(N + HELD_BACK, k, rng) for k, name in enumerate(NAMES)}
    series["spike"][SPIKES] += [3.0, -3.0, 2.5]
    series["shift"][SHIFT_AT:] += 2.0
    series["flat"][FLAT] = series["flat"][FLAT.start - 1]
    engine = StreamEngine(
        EngineConfig(warmup_events=1600, first_fit_steps=200, fit_every=2000), seed=seed
    )
    scores = {name: np.zeros(N) for name in NAMES}
    forecasts = []
    for t in range(N):
        out = engine.process([Event(name, {"value": float(series[name][t])}) for name in NAMES])
        for name, score in zip(NAMES, out):
            scores[name][t] = score.score
        engine.fine_tune()
        if t >= FORECAST_FROM and t + 12 < N:
            forecasts.append((t, engine.forecast(["clean"])[0]))
    return engine, series, scores, forecasts


def test_forecast_beats_last_value(run):
    _, series, _, forecasts = run
    y = series["clean"]
    model_err, naive_err, inside = [], [], []
    for t, fc in forecasts:
        truth = y[t + 1 : t + 13]
        model_err.append(np.abs(fc.mean[:, 0] - truth).mean())
        naive_err.append(np.abs(y[t] - truth).mean())
        inside.append(((fc.quantiles[0.1][:, 0] <= truth) & (truth <= fc.quantiles[0.9][:, 0])).mean())
    assert forecasts[0][1].warm and forecasts[0][1].mean.shape == (12, 1)
    # model / last-value error, seeds 0-7: 0.276-0.306; 0.45 leaves half as much again
    assert np.mean(model_err) <= 0.45 * np.mean(naive_err)
    # the 10-90% band should hold about 80% of the outcomes; seeds 0-7: 0.726-0.787
    assert 0.6 <= np.mean(inside) <= 0.9


def test_injected_anomalies_score_above_99th_percentile_of_normal_points(run):
    engine, _, scores, _ = run
    for name in NAMES:
        assert np.all((scores[name] >= 0) & (scores[name] <= 1))
    normal = scores["spike"][1000:]
    mask = np.ones_like(normal, dtype=bool)
    # the spike's tail: the jump there and back stays in the smoothing window for `smoothing`
    # events, and the short-run level settles for a few more
    tail = 2 * engine.config.smoothing
    for s in SPIKES:
        mask[s - 1000 : s - 1000 + tail] = False
    p99 = np.percentile(normal[mask], 99)
    # The scores are calibrated ranks that saturate near 1, so the 99th percentile of the
    # normal points is the natural bar. Smallest gap to it over seeds 0-7: spikes 0.036 (the
    # lowest spike scored 0.9991), shift 0.009, flat run 0.010; it never closed.
    assert all(scores["spike"][s] > p99 for s in SPIKES)
    assert scores["shift"][SHIFT_AT] > np.percentile(scores["shift"][1000:SHIFT_AT], 99)
    assert scores["flat"][FLAT].max() > np.percentile(scores["flat"][1000 : FLAT.start], 99)


def _lag1(x: np.ndarray) -> float:
    x = x - x.mean()
    return float((x[1:] * x[:-1]).sum() / (x * x).sum())


def test_continuations_match_held_back_data(run):
    """64 sampled continuations of one period (40 steps) against the real next 40 points.

    Over seeds 0-7 the model's continuations are much less alike than its forecasts: |mean
    difference| / real sd 0.010-0.680, sample sd / real sd 0.931-1.190, |lag-1 difference|
    0.003-0.101 (real lag-1 about 0.97). The bounds keep a margin over those and still fail for
    what a broken generator gives: white noise (lag-1 near 0), a flat line (sd near 0), a path
    that drifts away (mean several sd off) or explodes (sd many times too large)."""
    engine, series, _, _ = run
    held_back = series["clean"][N : N + PERIOD]
    samples = engine.generate("clean", horizon=PERIOD, n_samples=64)[:, :, 0]
    assert samples.shape == (64, PERIOD)
    assert abs(samples.mean() - held_back.mean()) < 1.0 * held_back.std()
    assert 0.7 < samples.std() / held_back.std() < 1.4
    lag1 = np.mean([_lag1(path) for path in samples])
    assert abs(lag1 - _lag1(held_back)) < 0.15
