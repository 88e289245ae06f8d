"""statsforecast's AutoETS / AutoTheta as prequential forecast baselines (the eval extra)."""

from __future__ import annotations

import numpy as np
import pytest

from streamvgan.errors import ConfigurationError
from streamvgan.eval.statsforecast_models import StatsForecastModel

pytest.importorskip("statsforecast", reason="statsforecast is in the eval extra")


@pytest.mark.parametrize("kind", ["autoets", "autotheta"])
@pytest.mark.slow
def test_forecasts_a_seasonal_series_better_than_the_last_value(kind: str) -> None:
    t = np.arange(72)
    y = 10 + 3 * np.sin(2 * np.pi * t / 12) + 0.05 * t
    model = StatsForecastModel(kind, season=12)
    for v in y[:60]:
        model.learn_one(float(v))
    q = model.forecast_quantiles(12, mean=True)
    truth = y[60:72]
    err = np.abs(np.asarray(q["mean"]) - truth).mean()
    last_err = np.abs(y[59] - truth).mean()
    # a clean sine with a trend: the fitted seasonal models are near exact, the last value
    # is off by the season's amplitude
    assert err < 0.3 * last_err
    assert np.all(np.asarray(q[0.1]) <= np.asarray(q[0.5]) + 1e-9)
    assert np.all(np.asarray(q[0.5]) <= np.asarray(q[0.9]) + 1e-9)


def test_a_very_short_history_forecasts_the_last_value() -> None:
    model = StatsForecastModel("autotheta", season=12)
    for v in [1.0, 2.0, 3.0]:
        model.learn_one(v)
    assert model.forecast(3) == [3.0, 3.0, 3.0]


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="autoarima"):
        StatsForecastModel("autoarima")
