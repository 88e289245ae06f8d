"""Baseline anomaly detectors for the NAB comparison, and the factory that builds every detector
the evaluation can run by name.

The baselines are deliberately plain: River's Half-Space Trees (Tan, Ting & Liu, "Fast Anomaly
Detection for Streaming Data", IJCAI 2011) behind a min-max scaler, and a rolling z-score,
the streaming form of NAB's "windowed Gaussian" detector.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from river import anomaly, base, compose, preprocessing, stats, utils

from streamvgan.errors import ConfigurationError, InvalidInputError

__all__ = ["DETECTORS", "RollingZScore", "make_detector", "make_hst"]


class RollingZScore(base.AnomalyDetector):
    """Distance of a value from the mean of the last ``window_size`` values, in standard
    deviations, mapped to [0, 1).

    The score of ``x`` uses only the values learnt before it, so calling ``score_one`` then
    ``learn_one`` is strictly online. The z-score ``|x - mean| / std`` is mapped to
    ``z / (1 + z)``: any increasing map gives the same NAB score (its threshold is optimised
    over the corpus), and unlike a Gaussian tail probability this one does not round large
    deviations to exactly 1.0, which would make them indistinguishable.

    Parameters
    ----------
    window_size
        Number of past values the mean and variance are computed over.
    min_samples
        Values needed before scores are non-zero.
    on
        The feature to read; ``None`` reads the only feature of a univariate ``x``.

    Examples
    --------

    >>> det = RollingZScore(window_size=50)
    >>> for i in range(100):
    ...     x = {"value": float(i % 5)}
    ...     _ = det.score_one(x)
    ...     det.learn_one(x)
    >>> round(det.score_one({"value": 2.0}), 3), round(det.score_one({"value": 20.0}), 3)
    (0.0, 0.927)

    """

    def __init__(self, window_size: int = 500, min_samples: int = 10, on: str | None = None):
        if window_size < 2:
            raise ConfigurationError(f"window_size={window_size}; use at least 2")
        self.window_size = window_size
        self.min_samples = min_samples
        self.on = on
        self._mean = utils.Rolling(stats.Mean, window_size=window_size)
        self._var = utils.Rolling(stats.Var, window_size=window_size, ddof=0)
        self._n = 0

    @classmethod
    def _unit_test_params(cls):
        yield {"window_size": 10, "min_samples": 2}

    def _value(self, x: dict[str, Any]) -> float:
        if self.on is not None:
            return float(x[self.on])
        if len(x) != 1:
            raise InvalidInputError(
                f"RollingZScore got features {sorted(x)}; it is univariate: pass one feature "
                "or set on='<feature name>'"
            )
        return float(next(iter(x.values())))

    def learn_one(self, x: dict) -> None:
        v = self._value(x)
        self._mean.update(v)
        self._var.update(v)
        self._n += 1

    def score_one(self, x: dict) -> float:
        if self._n < self.min_samples:
            return 0.0
        v = self._value(x)
        # .obj is the wrapped statistic: Rolling's attribute forwarding is typed as object
        std = math.sqrt(max(self._var.obj.get(), 0.0))
        dev = abs(v - self._mean.obj.get())
        if std == 0.0:
            # A constant history: any change is as surprising as it gets, no change is not.
            return 0.0 if dev == 0.0 else 1.0 - 1e-9
        z = dev / std
        return z / (1.0 + z)


def make_hst(seed: int = 0, n_trees: int = 10, height: int = 8, window_size: int = 250) -> Any:
    """River's HalfSpaceTrees behind a MinMaxScaler, as a river pipeline.

    Half-space trees expect features in [0, 1]; the scaler learns the running min and max.
    The tree parameters are River's defaults.

    >>> det = make_hst(seed=1)
    >>> for i in range(300):
    ...     x = {"value": float(i % 7)}
    ...     _ = det.score_one(x)
    ...     det.learn_one(x)
    >>> 0.0 <= det.score_one({"value": 3.0}) <= 1.0
    True
    """
    return compose.Pipeline(
        preprocessing.MinMaxScaler(),
        anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed),
    )


def _streamvgan(seed: int = 0, **params: Any) -> Any:
    # Imported here so the baselines (and the NAB scorer) work in builds without the model.
    try:
        from streamvgan.river import VAEGANDetector
    except ImportError as exc:
        raise ConfigurationError(
            f"the streamvgan detector is not available ({exc}); run the baselines "
            "(--detectors hst,zscore) or install streamvgan with its model"
        ) from exc
    return VAEGANDetector(seed=seed, **params)


#: The one parameter set streamvgan uses on every NAB file: the defaults plus an alert
#: cooldown, because NAB counts only the earliest detection in a window and every later one
#: outside a window as a false positive (an incident should raise one alert).
NAB_PARAMS: dict[str, Any] = {"alert_cooldown": 30}

#: Detectors the evaluation can run by name: ``name -> (factory, fixed keyword arguments)``.
#: The ablations are the full model with one ingredient switched off; the ``_model`` variants
#: score with the network's signal alone (``signals=model``), ``_predictive`` ones with
#: ``model_signal="predictive"`` (the error of the forecast made before the value arrived,
#: README "How the score is computed").
DETECTORS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "streamvgan": (_streamvgan, dict(NAB_PARAMS)),
    "streamvgan_noadv": (_streamvgan, {**NAB_PARAMS, "adversarial": False}),
    "streamvgan_random": (_streamvgan, {**NAB_PARAMS, "init": "random"}),
    # the shipped weights are variational: the ablation starts from random ones
    "streamvgan_novar": (_streamvgan, {**NAB_PARAMS, "variational": False, "init": "random"}),
    "streamvgan_predictive": (_streamvgan, {**NAB_PARAMS, "model_signal": "predictive"}),
    "streamvgan_model": (_streamvgan, {**NAB_PARAMS, "signals": ["model"]}),
    "streamvgan_model_predictive": (
        _streamvgan,
        {**NAB_PARAMS, "signals": ["model"], "model_signal": "predictive"},
    ),
    "hst": (make_hst, {}),
    "zscore": (lambda seed=0, **p: RollingZScore(**p), {}),
}


def make_detector(name: str, seed: int = 0, params: dict[str, Any] | None = None) -> Any:
    """Build a fresh detector by name; ``params`` override its defaults.

    >>> make_detector("zscore", params={"window_size": 20}).window_size
    20
    """
    try:
        factory, fixed = DETECTORS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}"
        ) from None
    return factory(seed=seed, **{**fixed, **(params or {})})
