"""streamvgan inside River: an anomaly-detection pipeline and a forecaster, on bundled data.

1. Detection: ``compose.Discard("Time") | VAEGANDetector`` wrapped in River's
   ``anomaly.QuantileFilter``, run ``score_one`` then ``learn_one`` over River's WaterFlow data
   set (hourly water flow through a pipeline branch, 1,268 points), and evaluated with ROC AUC
   against its four known anomalous segments: three "low value moments" (water losses or
   maintenance) and, after the first two, a small peak from a pumping operation. WaterFlow's
   docstring describes the segments without giving their times; the spans below were read off
   the series (each is where the flow leaves its usual 99-106 l/s band).
2. Forecasting: ``VAEGANForecaster`` evaluated with ``river.evaluate.evaluate`` (progressive
   validation over a horizon: forecast the next ``horizon`` values, then learn the true one),
   next to a persistence forecaster (tomorrow = the last value seen) as the yardstick.

Run it::

    python examples/river_pipeline.py            # the whole data set, default settings
    python examples/river_pipeline.py --fast     # small model, a few seconds

``main()`` returns the numbers (tests/examples/test_river_pipeline.py asserts on them).
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime
from typing import Any

from river import anomaly, compose, datasets, metrics
from river import evaluate as river_evaluate
from river.time_series.base import Forecaster

import streamvgan

log = logging.getLogger("examples.river_pipeline")

#: The four anomalous segments of ``river.datasets.WaterFlow`` (local time of the data set).
ANOMALOUS_SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("low flow", "2022-03-24T08:00:00+01:00", "2022-03-25T01:00:00+01:00"),
    ("low flow", "2022-03-29T08:00:00+02:00", "2022-03-29T21:00:00+02:00"),
    ("pumping peak", "2022-04-03T05:00:00+02:00", "2022-04-03T07:00:00+02:00"),
    ("low flow", "2022-04-27T15:00:00+02:00", "2022-04-28T06:00:00+02:00"),
)
_SEGMENTS = [
    (datetime.fromisoformat(a), datetime.fromisoformat(b)) for _, a, b in ANOMALOUS_SEGMENTS
]

#: Small settings that run in seconds on a laptop CPU (and in CI): a tiny random network
#: (the default starts from the shipped pretrained one, whose size is fixed).
FAST_PARAMS: dict[str, Any] = {
    "init": "random",
    "warmup_events": 200,
    "fit_every": 200,
    "first_fit_steps": 50,
    "fit_steps": 10,
    "hidden_size": 16,
}


def segment_of(ts: datetime) -> int | None:
    """Index of the anomalous segment that contains ``ts``, or None."""
    for i, (start, end) in enumerate(_SEGMENTS):
        if start <= ts <= end:
            return i
    return None


def detect_waterflow(
    q: float = 0.95, seed: int = 0, limit: int | None = None, **params: Any
) -> dict[str, Any]:
    """Run the detection pipeline over WaterFlow; ROC AUC and flag rates by segment.

    ``q`` is the QuantileFilter's quantile: a point is flagged when its score exceeds the
    ``q``-quantile of the scores seen so far.
    """
    detector = streamvgan.VAEGANDetector(seed=seed, **params)
    model = anomaly.QuantileFilter(compose.Discard("Time") | detector, q=q)
    auc = metrics.ROCAUC(n_thresholds=100)
    flagged_in = flagged_out = n_in = n_out = 0
    found = [0] * len(_SEGMENTS)
    top: list[tuple[float, str]] = []
    rows = datasets.WaterFlow()
    for i, (x, y) in enumerate(rows.take(limit) if limit else rows):
        features = {"Time": x["Time"], "flow": y}
        score = model.score_one(features)
        is_flagged = bool(model.classify(score))
        model.learn_one(features)
        segment = segment_of(x["Time"])
        auc.update(segment is not None, score)
        if segment is None:
            n_out += 1
            flagged_out += is_flagged
        else:
            n_in += 1
            flagged_in += is_flagged
            found[segment] += is_flagged
        top.append((score, x["Time"].isoformat()))
    top.sort(reverse=True)
    result = {
        "n": n_in + n_out,
        "n_anomalous": n_in,
        "roc_auc": auc.get(),
        "flag_rate_in_segments": flagged_in / max(n_in, 1),
        "flag_rate_elsewhere": flagged_out / max(n_out, 1),
        "segments_flagged": sum(1 for f in found if f),
        "model_version": detector.model_version,
        "top_scores": top[:5],
    }
    log.info(
        "WaterFlow detection: ROC AUC %.3f; flagged %.0f%% of anomalous points and %.1f%% of "
        "the others; %d of %d segments flagged",
        result["roc_auc"], 100 * result["flag_rate_in_segments"],
        100 * result["flag_rate_elsewhere"], result["segments_flagged"], len(_SEGMENTS),
    )
    return result


class LastValue(Forecaster):
    """Persistence: every future step equals the last value seen (the yardstick)."""

    def __init__(self) -> None:
        self.last = 0.0

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self.last = y

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        return [self.last] * horizon


def forecast_waterflow(
    horizon: int = 6, seed: int = 0, limit: int | None = None, **params: Any
) -> dict[str, Any]:
    """``river.evaluate.evaluate`` of VAEGANForecaster and of persistence on WaterFlow.

    Returns the MAE (l/s) at each step ahead for both, and their means.
    """
    def dataset() -> Any:
        rows = datasets.WaterFlow()
        return rows.take(limit) if limit else rows

    model = streamvgan.VAEGANForecaster(seed=seed, horizon=horizon, **params)
    ours = river_evaluate.evaluate(dataset(), model, metrics.MAE(), horizon=horizon)
    baseline = river_evaluate.evaluate(dataset(), LastValue(), metrics.MAE(), horizon=horizon)
    mae = [m.get() for m in ours.metrics]
    base = [m.get() for m in baseline.metrics]
    result = {
        "horizon": horizon,
        "mae": mae,
        "mae_persistence": base,
        "mean_mae": sum(mae) / len(mae),
        "mean_mae_persistence": sum(base) / len(base),
        "model_version": model.model_version,
        "forecast": model.forecast(horizon),
        "bands": model.forecast_quantiles(horizon),
    }
    log.info(
        "WaterFlow forecasts, MAE by step ahead (l/s): VAEGANForecaster %s (mean %.2f); "
        "persistence %s (mean %.2f)",
        [round(v, 2) for v in mae], result["mean_mae"], [round(v, 2) for v in base],
        result["mean_mae_persistence"],
    )
    return result


def main(
    fast: bool = False, seed: int = 0, limit: int | None = None, horizon: int = 6,
    q: float = 0.95,
) -> dict[str, Any]:
    """Both parts; ``fast`` uses :data:`FAST_PARAMS`, ``limit`` the first rows only."""
    params = dict(FAST_PARAMS) if fast else {}
    return {
        "detection": detect_waterflow(q=q, seed=seed, limit=limit, **params),
        "forecasting": forecast_waterflow(horizon=horizon, seed=seed, limit=limit, **params),
    }


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="small model (seconds, not minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    parser.add_argument("--horizon", type=int, default=6, help="forecast steps ahead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    # These networks are small: one thread is fastest (more only spin), as in the service.
    torch.set_num_threads(1)
    result = main(fast=args.fast, seed=args.seed, limit=args.limit, horizon=args.horizon)
    result["forecasting"].pop("bands")
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    _cli()
