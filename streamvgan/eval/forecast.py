"""Prequential evaluation of 1..H-step forecasts on real series.

Prequential ("test then train", Dawid 1984; Gama et al., "On evaluating stream learning
algorithms", Machine Learning 2013): every model learns every point in order; at each forecast
origin ``t`` it first forecasts ``y[t], ..., y[t+H-1]`` from ``y[:t]`` and only then learns
``y[t]``. All models see the same origins in the same run.

Metrics, for each series and model:

* MAE at step 1 and averaged over steps 1..H.
* MASE (Hyndman & Koehler, 2006): MAE divided by the mean absolute seasonal difference
  ``|y[t] - y[t-m]|`` of the whole series (``m`` its season, 1 when it has none), so the
  one-step seasonal-naive forecast scores about 1 and lower is better.
* Coverage of the 10-90% band (nominal 0.8) and CRPS (Gneiting & Raftery, 2007) of the normal
  distribution whose median and 10/90% quantiles match the forecast's. Models that give
  quantiles (``forecast_quantiles``) are scored on their own band; point forecasters are scored
  on an empirical band, their forecast plus the 10/90% quantiles of their own past errors at
  that step (only errors already observed at the origin), marked ``residual`` in the table.
"""

from __future__ import annotations

import bisect
import inspect
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from river import linear_model, optim, preprocessing, time_series

from streamvgan.errors import ConfigurationError
from streamvgan.progress import Progress

log = logging.getLogger(__name__)

__all__ = [
    "FORECASTERS",
    "SERIES",
    "ForecastReport",
    "ForecastRow",
    "LastValue",
    "SeasonalNaive",
    "Series",
    "crps_from_quantiles",
    "evaluate_series",
    "format_table",
    "load_series",
    "make_forecaster",
    "river_series",
    "run_forecasts",
    "to_json",
]

#: z of the 90% quantile of a standard normal, to turn a 10-90% band into a standard deviation.
_Z90 = 1.2815515655446004
_QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Series:
    """A univariate series with its season length and the horizon it is forecast at."""

    name: str
    values: np.ndarray
    season: int
    horizon: int
    source: str


# name -> (season, horizon, description). NAB series need --nab-data.
SERIES: dict[str, tuple[int, int, str]] = {
    "airline": (12, 12, "river AirlinePassengers, monthly passengers 1949-1960"),
    "waterflow": (24, 24, "river WaterFlow, hourly l/s, March-May 2022"),
    "trump": (1, 7, "river TrumpApproval, FiveThirtyEight's daily approval estimate"),
    "sp500": (1, 5, "river SP500Stocks, equal-weighted index level of the ten stocks' returns"),
    "nab_art_daily_small_noise": (288, 12, "NAB artificialNoAnomaly, 5-minute data"),
    "nab_art_noisy": (288, 12, "NAB artificialNoAnomaly, 5-minute data"),
}
# NAB's other anomaly-free files are left out: art_daily_no_noise and
# art_daily_perfect_square_wave repeat exactly every day (the seasonal-naive forecast is
# perfect and MASE's scale is 0) and art_flatline is constant.


def river_series(name: str) -> np.ndarray:
    """The values of one of River's bundled series (no download): ``airline``, ``waterflow``,
    ``trump`` or ``sp500`` (the equal-weighted index level of SP500Stocks' daily returns)."""
    from river import datasets

    if name == "airline":
        return np.array([y for _, y in datasets.AirlinePassengers()], dtype=float)
    if name == "waterflow":
        return np.array([y for _, y in datasets.WaterFlow()], dtype=float)
    if name == "trump":
        return np.array([y for _, y in datasets.TrumpApproval()], dtype=float)
    if name == "sp500":
        # The dataset holds daily % returns; the index level is what one would forecast.
        returns = np.array([list(x.values()) for x, _ in datasets.SP500Stocks()], dtype=float)
        return 100.0 * np.cumprod(1.0 + returns.mean(axis=1) / 100.0)
    raise ConfigurationError(f"unknown river series {name!r}")


def load_series(
    names: Sequence[str] | None = None, nab_data: str | Path | None = None
) -> list[Series]:
    """The named series (all of :data:`SERIES` by default); NAB ones only with ``nab_data``."""
    wanted = list(names) if names else list(SERIES)
    unknown = [n for n in wanted if n not in SERIES]
    if unknown:
        raise ConfigurationError(f"unknown series {unknown}; choose from {', '.join(SERIES)}")
    out = []
    for name in wanted:
        season, horizon, source = SERIES[name]
        if name.startswith("nab_"):
            if nab_data is None:
                if names:
                    raise ConfigurationError(f"series {name} needs --nab-data (a NAB checkout)")
                log.warning("no NAB checkout given: skipping %s", name)
                continue
            from streamvgan.eval.nab import read_data_file

            path = Path(nab_data) / "data" / "artificialNoAnomaly" / (name[4:] + ".csv")
            values = np.array(read_data_file(path)[1], dtype=float)
        else:
            values = river_series(name)
        out.append(Series(name, values, season, horizon, source))
    return out


class LastValue(time_series.base.Forecaster):
    """Forecasts the last value seen at every step.

    >>> m = LastValue()
    >>> for y in [1.0, 2.0, 3.0]:
    ...     m.learn_one(y)
    >>> m.forecast(2)
    [3.0, 3.0]
    """

    def __init__(self) -> None:
        self._last = 0.0

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self._last = float(y)

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        return [self._last] * horizon


class SeasonalNaive(time_series.base.Forecaster):
    """Forecasts the value one season earlier (the last value before a full season is seen).

    >>> m = SeasonalNaive(season=3)
    >>> for y in [1.0, 2.0, 3.0, 4.0]:
    ...     m.learn_one(y)
    >>> m.forecast(4)
    [2.0, 3.0, 4.0, 2.0]
    """

    def __init__(self, season: int = 1) -> None:
        self.season = season
        self._hist: list[float] = []

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self._hist.append(float(y))
        if len(self._hist) > self.season:
            del self._hist[0]

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        if len(self._hist) < self.season:
            return [self._hist[-1] if self._hist else 0.0] * horizon
        return [self._hist[h % self.season] for h in range(horizon)]


def _snarimax(season: int, horizon: int, seed: int = 0) -> Any:
    # One configuration for every series: AR(2) on first differences, one MA lag, one
    # seasonal AR lag when there is a season. The target is standardised so one SGD learning
    # rate suits series of any scale, and gradients are clipped: without that the recursive
    # multi-step forecasts diverged on WaterFlow and the NAB series.
    return time_series.SNARIMAX(
        p=2,
        d=1,
        q=1,
        m=season,
        sp=1 if season > 1 else 0,
        regressor=preprocessing.StandardScaler()
        | preprocessing.TargetStandardScaler(
            regressor=linear_model.LinearRegression(
                optimizer=optim.SGD(0.01), intercept_lr=0.01, clip_gradient=1.0
            )
        ),
    )


def _holtwinters(season: int, horizon: int, seed: int = 0) -> Any:
    if season > 1:
        return time_series.HoltWinters(alpha=0.3, beta=0.01, gamma=0.3, seasonality=season)
    return time_series.HoltWinters(alpha=0.5, beta=0.01)


def _streamvgan(season: int, horizon: int, seed: int = 0, **params: Any) -> Any:
    # The forecast head predicts the series' horizon directly (beyond it the adapter would
    # summarise sampled paths, which is slower and not what is being measured).
    params.setdefault("horizon", horizon)
    try:
        from streamvgan.river import VAEGANForecaster
    except ImportError as exc:
        raise ConfigurationError(
            f"the streamvgan forecaster is not available ({exc}); run the baselines "
            "(--models snarimax,holtwinters,last,snaive)"
        ) from exc
    return VAEGANForecaster(seed=seed, **params)


def _statsforecast(season: int, horizon: int, seed: int = 0, kind: str = "autoets") -> Any:
    from streamvgan.eval.statsforecast_models import StatsForecastModel

    return StatsForecastModel(kind, season)


#: name -> (factory(season, horizon, seed, **params), fixed params).
FORECASTERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "streamvgan": (_streamvgan, {}),
    "streamvgan_noadv": (_streamvgan, {"adversarial": False}),
    # the shipped weights are variational: the ablation starts from random ones
    "streamvgan_novar": (_streamvgan, {"variational": False, "init": "random"}),
    # ablations of the pretrained network (issue 14): random first weights, no online
    # fine-tuning, and the network's forecast alone (no blend with last value / season)
    "streamvgan_random": (_streamvgan, {"init": "random"}),
    "streamvgan_nofinetune": (_streamvgan, {"fit_every": 10**9, "warmup_events": 10**9}),
    "streamvgan_network": (_streamvgan, {"forecast_blend": False}),
    "streamvgan_nonetwork": (_streamvgan, {"forecast_network": False}),
    # fine-tuning held near the pretrained weights (L2-SP, EngineConfig.finetune_anchor)
    "streamvgan_anchor": (_streamvgan, {"finetune_anchor": 0.1}),
    "snarimax": (_snarimax, {}),
    "holtwinters": (_holtwinters, {}),
    "autoets": (_statsforecast, {"kind": "autoets"}),
    "autotheta": (_statsforecast, {"kind": "autotheta"}),
    "last": (lambda season, horizon, seed=0: LastValue(), {}),
    "snaive": (lambda season, horizon, seed=0: SeasonalNaive(season), {}),
}


def make_forecaster(
    name: str, season: int, horizon: int, seed: int = 0, params: dict[str, Any] | None = None
) -> Any:
    """A fresh forecaster by name for a series with the given season and horizon."""
    try:
        factory, fixed = FORECASTERS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown forecaster {name!r}; choose from {', '.join(FORECASTERS)}"
        ) from None
    # the variant's own switch wins over parameters given for every streamvgan variant
    return factory(season, horizon, seed=seed, **{**(params or {}), **fixed})


def crps_from_quantiles(
    y: np.ndarray, q10: np.ndarray, q50: np.ndarray, q90: np.ndarray
) -> np.ndarray:
    """CRPS of the normal with median ``q50`` and 10-90% band ``[q10, q90]``, at ``y``.

    A zero-width band is a point forecast, whose CRPS is the absolute error.

    >>> z90 = 1.2815515655446004   # a standard normal's band
    >>> crps = crps_from_quantiles(np.zeros(1), np.array([-z90]), np.zeros(1), np.array([z90]))
    >>> round(float(crps[0]), 4)
    0.2337
    """
    from scipy.special import erf

    y, q10, q50, q90 = (np.asarray(a, dtype=float) for a in (y, q10, q50, q90))
    sigma = np.maximum(q90 - q10, 0.0) / (2.0 * _Z90)
    err = np.abs(y - q50)
    safe = np.where(sigma > 0, sigma, 1.0)
    z = (y - q50) / safe
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + erf(z / math.sqrt(2)))
    crps = safe * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    return np.where(sigma > 0, crps, err)


@dataclass
class ForecastRow:
    """One model on one series."""

    series: str
    model: str
    horizon: int
    n_origins: int
    mae_1: float
    mae: float
    mase: float
    coverage: float
    crps: float
    band: str
    seconds: float
    mae_by_step: list[float] = field(default_factory=list)


@dataclass
class ForecastReport:
    rows: list[ForecastRow]
    #: For plots: per series, the true values and each model's last forecast (mean, q10, q90).
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


class _ResidualBand:
    """Empirical 10/90% error quantiles per step, from errors already observed."""

    def __init__(self, horizon: int, window: int = 500):
        self.window = window
        # per step h: sorted list of (time the truth arrived, error)
        self._pending: list[list[tuple[int, float]]] = [[] for _ in range(horizon)]

    def add(self, h: int, arrives: int, error: float) -> None:
        self._pending[h].append((arrives, error))

    def band(self, h: int, now: int) -> tuple[float, float] | None:
        errs = self._pending[h]
        k = bisect.bisect_right(errs, (now, math.inf))  # errors whose truth was learnt by now
        if k < 5:
            return None
        e = np.fromiter((v for _, v in errs[max(0, k - self.window) : k]), dtype=float)
        return float(np.quantile(e, 0.1)), float(np.quantile(e, 0.9))


def _origins(n: int, season: int, horizon: int, max_origins: int) -> np.ndarray:
    warmup = max(2 * season, 24)
    last = n - horizon
    if last <= warmup:
        raise ConfigurationError(
            f"series of {n} points is too short for season {season} and horizon {horizon}"
        )
    all_origins = np.arange(warmup, last + 1)
    if len(all_origins) <= max_origins:
        return all_origins
    return np.unique(np.linspace(warmup, last, max_origins).round().astype(int))


#: the first forecast origin of a cold-start run (``first_points``)
COLD_START_ORIGIN = 24


def evaluate_series(
    series: Series, model: Any, name: str, max_origins: int = 400, first_points: int | None = None
) -> tuple[ForecastRow, dict[str, Any]]:
    """Run one fresh model over one series prequentially and compute its metrics.

    ``first_points`` (a cold start): every origin from point 24 on whose targets lie in the
    series' first ``first_points`` points, instead of ``max_origins`` origins over it all."""
    y = series.values
    n, H, m = len(y), series.horizon, series.season
    if first_points is not None:
        end = min(first_points, n) - H
        if end < COLD_START_ORIGIN:
            raise ConfigurationError(
                f"first_points={first_points} leaves no origin from {COLD_START_ORIGIN} on for "
                f"horizon {H} on {series.name} ({n} points)"
            )
        origins = set(range(COLD_START_ORIGIN, end + 1))
    else:
        origins = set(_origins(n, m, H, max_origins).tolist())
    has_quantiles = callable(getattr(model, "forecast_quantiles", None))
    with_mean = has_quantiles and "mean" in inspect.signature(model.forecast_quantiles).parameters
    residuals = _ResidualBand(H)
    abs_err: list[list[float]] = [[] for _ in range(H)]
    covered: list[bool] = []
    crps: list[float] = []
    example: dict[str, Any] = {}
    t0 = time.perf_counter()
    for t in range(n):
        if t in origins:
            truth = y[t : t + H]
            if has_quantiles:
                if with_mean:  # one call for the mean and the bands
                    q = model.forecast_quantiles(H, mean=True)
                    mean = np.asarray(q["mean"], dtype=float)
                else:
                    mean = np.asarray(model.forecast(H), dtype=float)
                    q = model.forecast_quantiles(H)
                lo, mid, hi = (np.asarray(q[k], dtype=float) for k in _QUANTILES)
            else:
                mean = np.asarray(model.forecast(H), dtype=float)
                lo, mid, hi = np.full(H, np.nan), mean, np.full(H, np.nan)
                for h in range(H):
                    b = residuals.band(h, t)
                    if b is not None:
                        lo[h], hi[h] = mean[h] + b[0], mean[h] + b[1]
                    residuals.add(h, t + h + 1, float(truth[h] - mean[h]))
            for h in range(H):
                abs_err[h].append(abs(truth[h] - mean[h]))
            ok = ~np.isnan(lo)
            covered.extend(((truth >= lo) & (truth <= hi))[ok].tolist())
            crps.extend(crps_from_quantiles(truth[ok], lo[ok], mid[ok], hi[ok]).tolist())
            example = {"origin": t, "mean": mean.tolist(), "q10": lo.tolist(), "q90": hi.tolist()}
        model.learn_one(float(y[t]))
    seconds = time.perf_counter() - t0
    scale = float(np.mean(np.abs(y[m:] - y[:-m])))
    mae_by_step = [float(np.mean(e)) for e in abs_err]
    mae = float(np.mean(mae_by_step))
    row = ForecastRow(
        series=series.name,
        model=name,
        horizon=H,
        n_origins=len(origins),
        mae_1=mae_by_step[0],
        mae=mae,
        mase=mae / scale if scale > 0 else float("nan"),
        coverage=float(np.mean(covered)) if covered else float("nan"),
        crps=float(np.mean(crps)) if crps else float("nan"),
        band="model" if has_quantiles else "residual",
        seconds=seconds,
        mae_by_step=mae_by_step,
    )
    return row, example


def run_forecasts(
    models: Sequence[str],
    series: Sequence[str] | None = None,
    nab_data: str | Path | None = None,
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
    max_origins: int = 400,
    first_points: int | None = None,
) -> ForecastReport:
    """Every model on every series, each model fresh per series."""
    t0 = time.perf_counter()
    report = ForecastReport(rows=[])
    all_series = load_series(series, nab_data)
    with Progress(len(all_series) * len(models), "forecast runs", unit="run") as progress:
        for s in all_series:
            report.examples[s.name] = {"values": s.values.tolist(), "models": {}}
            for name in models:
                model = make_forecaster(name, s.season, s.horizon, seed, (params or {}).get(name))
                row, example = evaluate_series(s, model, name, max_origins, first_points)
                report.rows.append(row)
                report.examples[s.name]["models"][name] = example
                progress.update(
                    1,
                    note=f"{name} on {s.name}: MASE {row.mase:.3f}, coverage "
                    f"{row.coverage:.2f} in {row.seconds:.1f}s",
                )
    report.seconds = time.perf_counter() - t0
    return report


def _f(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def format_table(report: ForecastReport) -> str:
    """One markdown table, grouped by series."""
    lines = [
        "| Series | Model | H | Origins | MAE@1 | MAE@1..H | MASE | 10-90% coverage | CRPS | "
        "Band | Seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.series} | {r.model} | {r.horizon} | {r.n_origins} | {_f(r.mae_1)} | "
            f"{_f(r.mae)} | {_f(r.mase)} | {_f(r.coverage, 2)} | {_f(r.crps)} | {r.band} | "
            f"{r.seconds:.1f} |"
        )
    return "\n".join(lines)


def relative_mase(report: ForecastReport, reference: str = "snaive") -> dict[str, dict[str, float]]:
    """Per model: the geometric mean over series of its MASE divided by ``reference``'s on the
    same series (below 1: better than the reference), the worst such ratio to the best other
    model on a series, and the mean 10-90% coverage."""
    by = {(r.series, r.model): r for r in report.rows}
    series = sorted({r.series for r in report.rows})
    models = list(dict.fromkeys(r.model for r in report.rows))
    out: dict[str, dict[str, float]] = {}
    for model in models:
        ratios, worst, coverage = [], [], []
        for s in series:
            row, ref = by.get((s, model)), by.get((s, reference))
            if row is None or ref is None or not ref.mase > 0:
                continue
            ratios.append(row.mase / ref.mase)
            others = [
                by[(s, o)].mase
                for o in models
                if o != model and (s, o) in by and not o.startswith("streamvgan")
            ]
            if others:
                worst.append(row.mase / min(others))
            coverage.append(row.coverage)
        if ratios:
            out[model] = {
                "geomean_mase_ratio": float(np.exp(np.mean(np.log(ratios)))),
                "worst_ratio_to_best_baseline": float(max(worst)) if worst else float("nan"),
                "mean_coverage": float(np.nanmean(coverage)),
            }
    return out


def format_summary(report: ForecastReport, reference: str = "snaive") -> str:
    """The :func:`relative_mase` table in markdown."""
    lines = [
        f"| Model | geometric mean of MASE / {reference} MASE | worst series: MASE / best "
        "baseline's | mean 10-90% coverage |",
        "|---|---|---|---|",
    ]
    for model, v in relative_mase(report, reference).items():
        lines.append(
            f"| {model} | {_f(v['geomean_mase_ratio'])} | "
            f"{_f(v['worst_ratio_to_best_baseline'])} | {_f(v['mean_coverage'], 2)} |"
        )
    return "\n".join(lines)


def to_json(report: ForecastReport) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return clean({"seconds": report.seconds, "rows": [asdict(r) for r in report.rows]})
