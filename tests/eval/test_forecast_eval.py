"""Prequential forecast evaluation: metrics on series with known answers, and a real run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamvgan.eval import forecast as fc

SMALL_STREAMVGAN = {"init": "random", "warmup_events": 60, "first_fit_steps": 20, "fit_steps": 5, "hidden_size": 8}


def _series(values, season=1, horizon=3, name="toy"):
    return fc.Series(name, np.asarray(values, dtype=float), season, horizon, "test")


def test_seasonal_naive_is_perfect_on_a_periodic_series():
    s = _series(np.tile([1.0, 5.0, 3.0, 2.0], 40), season=4, horizon=4)
    row, _ = fc.evaluate_series(s, fc.make_forecaster("snaive", 4, 4), "snaive")
    assert row.mae == 0.0 and row.coverage == 1.0 and row.crps == 0.0
    assert math.isnan(row.mase)  # MASE's scale is 0 on an exactly periodic series


def test_last_value_on_a_line_has_known_errors():
    s = _series(np.arange(100.0), horizon=3)
    row, example = fc.evaluate_series(s, fc.LastValue(), "last", max_origins=1000)
    assert row.mae_by_step == [1.0, 2.0, 3.0]
    assert row.mase == pytest.approx(2.0)  # scale: mean |y[t] - y[t-1]| = 1
    assert row.n_origins == 100 - 3 - 24 + 1  # warm-up of max(2m, 24) points, full horizons
    # The residual band comes only from errors already observed: constant errors, so the
    # band collapses onto the truth and every later point is covered.
    assert row.band == "residual" and row.coverage == 1.0
    assert example["origin"] == 97 and example["mean"] == [96.0, 96.0, 96.0]


class _Oracle:
    """A forecaster that reads the future (to check the harness uses the model's band)."""

    def __init__(self, y, width):
        self.y, self.width, self.t = y, width, 0

    def learn_one(self, y, x=None):
        self.t += 1

    def forecast(self, horizon):
        return list(self.y[self.t : self.t + horizon])

    def forecast_quantiles(self, horizon):
        m = np.array(self.forecast(horizon))
        return {0.1: list(m - self.width), 0.5: list(m), 0.9: list(m + self.width)}


def test_model_band_is_used_and_crps_matches_closed_form():
    y = np.sin(np.arange(200) / 5)
    row, _ = fc.evaluate_series(_series(y, horizon=2), _Oracle(y, 1.0), "oracle")
    assert row.band == "model" and row.mae == 0.0 and row.coverage == 1.0
    sigma = 1.0 / 1.2815515655446004
    assert row.crps == pytest.approx(sigma * (2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi)))


def test_crps_of_a_point_forecast_is_the_absolute_error():
    c = fc.crps_from_quantiles(np.array([3.0]), np.array([1.0]), np.array([1.0]), np.array([1.0]))
    assert c[0] == 2.0


@pytest.mark.slow
def test_baselines_on_airline_passengers():
    report = fc.run_forecasts(["snarimax", "holtwinters", "last", "snaive"], ["airline"])
    rows = {r.model: r for r in report.rows}
    assert {r.n_origins for r in rows.values()} == {144 - 12 - 24 + 1}
    assert all(np.isfinite(r.mase) and 0 < r.coverage <= 1 for r in rows.values())
    # Trend and season matter on this series: both models beat the last value.
    assert rows["holtwinters"].mase < rows["last"].mase
    assert rows["snarimax"].mase < rows["last"].mase
    assert rows["last"].mase == pytest.approx(1.566, abs=1e-3)
    table = fc.format_table(report)
    assert table.count("| airline |") == 4


def test_bundled_river_series_load_offline():
    series = {s.name: s for s in fc.load_series(["airline", "waterflow", "trump", "sp500"])}
    assert {k: len(s.values) for k, s in series.items()} == {
        "airline": 144, "waterflow": 1268, "trump": 1001, "sp500": 1257,
    }
    assert series["sp500"].values[0] == pytest.approx(100.0, abs=2.0)
    with pytest.raises(ValueError, match="needs --nab-data"):
        fc.load_series(["nab_art_noisy"])


def test_nab_series_with_data(nab_root):
    (s,) = fc.load_series(["nab_art_noisy"], nab_root)
    assert len(s.values) == 4032 and s.season == 288


@pytest.mark.slow
def test_streamvgan_forecaster_is_scored_on_its_own_band():
    pytest.importorskip("streamvgan.river")
    report = fc.run_forecasts(
        ["streamvgan"], ["airline"], params={"streamvgan": SMALL_STREAMVGAN}, max_origins=30
    )
    (row,) = report.rows
    assert row.band == "model" and row.n_origins == 30
    assert np.isfinite(row.mae) and np.isfinite(row.crps) and 0 <= row.coverage <= 1
