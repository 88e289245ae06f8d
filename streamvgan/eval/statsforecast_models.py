"""statsforecast's AutoETS and AutoTheta as prequential forecasters (the ``eval`` extra).

The field's statistical baselines (Hyndman et al.'s automatic exponential smoothing; the
Theta method of Assimakopoulos and Nikolopoulos, selected automatically as in Fiorucci et al.
2016), from Nixtla's statsforecast, not re-implemented here. Each is refitted from scratch at
every forecast origin on the whole history seen so far, as a careful forecaster would, and
gives its own 80% prediction interval as the 10-90% band.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from streamvgan.errors import ConfigurationError

log = logging.getLogger(__name__)

KINDS = ("autoets", "autotheta")


def _model(kind: str, season: int) -> Any:
    try:
        from statsforecast.models import AutoETS, AutoTheta
    except ImportError as exc:
        raise ConfigurationError(
            f"the {kind} baseline needs statsforecast: pip install 'streamvgan[eval]' ({exc})"
        ) from exc
    if kind == "autoets":
        # ETS' seasonal models need season_length <= 24 in statsforecast (as in R's ets):
        # longer seasons fall back to the non-seasonal models, as R does
        return AutoETS(season_length=season if season <= 24 else 1)
    return AutoTheta(season_length=season)


class StatsForecastModel:
    """``learn_one`` keeps the history; ``forecast_quantiles`` refits and forecasts.

    Before ``2 * season + 4`` points (too few to fit a seasonal model) it fits the
    non-seasonal model; before 8 points it forecasts the last value with a band of zero width.
    """

    def __init__(self, kind: str, season: int = 1) -> None:
        if kind not in KINDS:
            raise ConfigurationError(f"unknown statsforecast model {kind!r}; choose from {KINDS}")
        self.kind = kind
        self.season = season
        self._history: list[float] = []
        self._failures = 0

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self._history.append(float(y))

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        return list(self.forecast_quantiles(horizon, mean=True)["mean"])

    def forecast_quantiles(self, horizon: int, mean: bool = False) -> dict[Any, list[float]]:
        y = np.asarray(self._history, dtype=np.float64)
        last = float(y[-1]) if len(y) else 0.0
        flat = [last] * horizon
        out: dict[Any, list[float]] = {0.1: flat, 0.5: flat, 0.9: flat, "mean": flat}
        # a seasonal fit needs two seasons and a few points; before that, the non-seasonal
        # model, as a careful forecaster would fit; before 8 points, the last value
        season = self.season if len(y) >= 2 * self.season + 4 else 1
        if len(y) < 8:
            return out
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fc = _model(self.kind, season).forecast(y=y, h=horizon, level=[80])
        except ConfigurationError:
            raise
        except Exception as exc:  # a failed fit at one origin: last value, counted and logged
            self._failures += 1
            if self._failures <= 3:
                log.warning(
                    "%s failed to fit %d points (%s); forecasting the last value",
                    self.kind,
                    len(y),
                    exc,
                )
            return out
        m = np.asarray(fc["mean"], dtype=np.float64)
        lo = np.asarray(fc["lo-80"], dtype=np.float64)
        hi = np.asarray(fc["hi-80"], dtype=np.float64)
        return {0.1: lo.tolist(), 0.5: m.tolist(), 0.9: hi.tolist(), "mean": m.tolist()}
