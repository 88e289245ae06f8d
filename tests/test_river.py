"""The River adapters: River's own estimator checks, pipelines, evaluation helpers, and the
adapter-level contract (bad input, generate, pickling)."""

from __future__ import annotations

import copy
import functools
import math
import pickle

import numpy as np
import pytest
from river import anomaly, compose, datasets, metrics, preprocessing, time_series
from river import evaluate as river_evaluate
from river.checks import yield_checks

import streamvgan
from streamvgan.engine.signals import EXTREME_FLOOR

FAST = {"init": "random", "warmup_events": 120, "first_fit_steps": 15, "fit_steps": 3, "fit_every": 200, "hidden_size": 8}
# River's checks feed new or missing features on purpose; streamvgan's contract is a fixed field
# set per stream with a ValueError otherwise (tested below), so these three are replaced.
FIELD_CHANGE_CHECKS = {
    "check_emerging_features",
    "check_disappearing_features",
    "check_radically_disappearing_features",
}


def synthetic_anomalies(n: int = 400, seed: int = 0):
    """A noisy sine with a spike every 50 points after 150, labelled 1."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        y = int(t >= 150 and t % 50 == 0)
        out.append(({"value": math.sin(t / 4) + 0.05 * rng.normal() + 4.0 * y}, y))
    return out


def _run_checks(model, dataset):
    ran = []
    for check in yield_checks(model):
        name = check.__name__
        if name in FIELD_CHANGE_CHECKS:
            continue
        if isinstance(check, functools.partial) and "dataset" in check.keywords:
            check = functools.partial(check.func, dataset=dataset)
        check(copy.deepcopy(model))
        ran.append(name)
    return ran


@pytest.mark.slow
def test_detector_passes_river_checks():
    ran = _run_checks(streamvgan.VAEGANDetector(**FAST), synthetic_anomalies())
    assert {"check_roc_auc", "check_pickling", "check_seeding_is_idempotent", "check_clone_is_idempotent",
            "check_predict_one_pure", "check_bounded_memory_growth"} <= set(ran)


@pytest.mark.slow
def test_forecaster_passes_river_checks():
    model = streamvgan.VAEGANForecaster(**FAST)
    ran = []
    for check in yield_checks(model):
        check(copy.deepcopy(model))
        ran.append(check.__name__)
    assert {"check_learn_one", "check_forecast", "check_pickling_supports_roundtrip"} <= set(ran)


# What each of River's replaced checks feeds after {"a", "b"}, and the error it must get instead.
FIELD_CHANGES = {
    "check_emerging_features": (
        {"a": 1.0, "b": 2.0, "c": 3.0}, "missing fields [] and extra fields ['c']"
    ),
    "check_disappearing_features": ({"a": 1.0}, "missing fields ['b'] and extra fields []"),
    "check_radically_disappearing_features": (
        {}, "values must be a non-empty mapping of field -> number, got {}"
    ),
}


def test_each_replaced_river_check_has_a_field_change_case():
    assert set(FIELD_CHANGES) == FIELD_CHANGE_CHECKS


@pytest.mark.parametrize("name", sorted(FIELD_CHANGE_CHECKS))
def test_field_changes_are_rejected_with_value_error(name):
    x, fragment = FIELD_CHANGES[name]
    detector = streamvgan.VAEGANDetector(**FAST)
    detector.learn_one({"a": 1.0, "b": 2.0})
    before = pickle.dumps(detector)
    for method in (detector.learn_one, detector.score_one):
        with pytest.raises(ValueError) as info:
            method(x)
        assert fragment in str(info.value)
    assert pickle.dumps(detector) == before  # the rejected event changed nothing


@pytest.mark.parametrize(
    "x, fragment",
    [
        ({"value": float("nan")}, "'value' must be finite, got nan"),
        ({"value": float("inf")}, "'value' must be finite, got inf"),
        ({"value": None}, "'value' must be a number, got None"),
        ({"value": "high"}, "'value' must be a number, got 'high'"),
        ({"value": 1e308}, "'value' must be within +-1e+30, got 1e+308"),  # issue 11
        ({"value": -1e39}, "'value' must be within +-1e+30, got -1e+39"),  # beyond float32
        ({"value": 10**400}, "'value' must be within +-1e+30, got an integer of about 401"),
        ({"value": 1.0, "other": 2.0}, "extra fields ['other']"),
        ([1.0], "x must be a dict"),
    ],
)
@pytest.mark.slow
def test_detector_bad_input_raises_and_keeps_state(x, fragment):
    detector = streamvgan.VAEGANDetector(**FAST)
    for t in range(200):
        detector.learn_one({"value": math.sin(t / 4)})
    before = pickle.dumps(detector)
    for method in (detector.learn_one, detector.score_one):
        with pytest.raises(ValueError) as info:
            method(x)
        assert fragment in str(info.value)
    assert pickle.dumps(detector) == before


@pytest.mark.parametrize("y", [float("nan"), float("inf"), None, "3", True, 1e308, -10**400])
def test_forecaster_bad_input_raises_and_keeps_state(y):
    model = streamvgan.VAEGANForecaster(**FAST)
    for t in range(50):
        model.learn_one(float(t))
    before = model.forecast(3)
    with pytest.raises(ValueError, match=r"^y must be (finite|a number|within \+-1e\+30), got"):
        model.learn_one(y)
    assert model.forecast(3) == before
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        model.forecast(0)


@pytest.mark.slow
def test_detector_in_pipeline_with_quantile_filter_on_waterflow(one_torch_thread):
    """WaterFlow's known anomalous segments are the lowest values; a pipeline with a scaler and
    a QuantileFilter must flag more of them than of the normal points."""
    model = anomaly.QuantileFilter(
        compose.Pipeline(preprocessing.StandardScaler(), streamvgan.VAEGANDetector(seed=1, **FAST)),
        q=0.98,
    )
    auc = metrics.ROCAUC()
    rows = list(datasets.WaterFlow())
    values = np.array([y for _, y in rows])
    low = values < np.percentile(values, 3)  # the "low value moments"
    flagged = []
    for (x, y), is_low in zip(rows, low):
        features = {"flow": y}
        score = model.score_one(features)
        flagged.append(model.classify(score))
        model.learn_one(features)
        auc.update(bool(is_low), score)
    flagged = np.array(flagged)
    # detector seeds 0-7: ROC AUC 0.9024-0.9028, flag-rate ratio 11.49 (the quantile filter
    # sets the flags); the bounds leave room for another machine's float rounding
    assert auc.get() > 0.85
    assert flagged[low].mean() > 6 * flagged[~low].mean()


@pytest.mark.filterwarnings("ignore:`time_series.evaluate` is deprecated")
@pytest.mark.slow
def test_forecaster_with_river_time_series_evaluate(one_torch_thread):
    model = streamvgan.VAEGANForecaster(seed=0, warmup_events=60, first_fit_steps=100, fit_every=24)
    mae = time_series.evaluate(datasets.AirlinePassengers(), model, metrics.MAE(), horizon=6)
    errors = [m.get() for m in mae.metrics]
    assert len(errors) == 6 and all(math.isfinite(e) for e in errors)
    assert model.model_version >= 2
    # AirlinePassengers ranges 104..622; an error this size means forecasts track the series.
    # Seeds 0-7: 30.8-32.1 passengers one month ahead
    assert errors[0] < 45


@pytest.mark.slow
def test_detector_with_river_evaluate_progressive_val_score(one_torch_thread):
    """river.evaluate.progressive_val_score drives score_one/learn_one through River's protocol
    and gets the same AUC as the same loop written out (the detector is seeded)."""
    data = synthetic_anomalies(500)
    detector = streamvgan.VAEGANDetector(**FAST)
    auc = metrics.ROCAUC()
    for x, y in data:
        auc.update(y, detector.score_one(x))
        detector.learn_one(x)
    river_auc = river_evaluate.progressive_val_score(
        data, streamvgan.VAEGANDetector(**FAST), metrics.ROCAUC()
    )
    assert river_auc.get() == auc.get()
    # measured: 0.898 by default (model_signal_weight=0.6), 0.943 at weight 1.0; the jump and
    # level signals alone reach 0.561 here (the sine's own steps are as large as its spikes),
    # so this fails if the model's signal stops ranking the spikes first. Over data and model
    # seeds 0-7 the AUC spreads from 0.791 to 0.938 (the old bound of 0.88 failed seeds 1 and
    # 3), so the bound sits below that and well above the rules alone.
    assert auc.get() > 0.75


@pytest.mark.slow
def test_generate_and_pickle_round_trip():
    det = streamvgan.VAEGANDetector(**FAST)
    for x, _ in synthetic_anomalies(200):
        det.learn_one(x)
    paths = det.generate(horizon=6, n_samples=4)
    assert len(paths) == 4 and len(paths[0]) == 6 and set(paths[0][0]) == {"value"}
    twin = pickle.loads(pickle.dumps(det))
    probe = {"value": 0.3}
    assert twin.score_one(probe) == det.score_one(probe)
    assert twin.model_version == det.model_version == 1


@pytest.mark.slow
def test_forecaster_beyond_head_horizon_uses_continuations(one_torch_thread):
    model = streamvgan.VAEGANForecaster(**FAST)
    for t in range(200):
        model.learn_one(5 + math.sin(t / 3))
    fc = model.forecast(20)
    bands = model.forecast_quantiles(20)
    # about the series' own range 4..6: since the season (19 steps for this sine of period
    # 6 pi) is found after 48 values, the head's 12 steps follow the sine (seeds 0-3:
    # 3.99-5.92, the season's phase slipping by 0.15 step), the continuations beyond stay near
    # the middle (4.71-5.19)
    assert len(fc) == 20 and all(3.9 < v < 6.1 for v in fc)
    assert max(fc[:12]) - min(fc[:12]) > 1.5  # the oscillation, not a flat line
    assert all(lo <= hi for lo, hi in zip(bands[0.1], bands[0.9]))


def test_unknown_parameter_is_rejected_at_construction():
    with pytest.raises(ValueError, match="unknown parameters \\['hiden_size'\\]"):
        streamvgan.VAEGANDetector(hiden_size=3)


def test_detector_says_what_drove_each_score():
    # issue 15: after score_one (and after the learn_one that follows it), .cause names the
    # signal and the field; a spike in field "b" of a 2-field stream is a new extreme in b,
    # and the next point (the spike still in the jump signal's smoothing window) a jump in b
    detector = streamvgan.VAEGANDetector(seed=0, warmup_events=10_000)
    assert detector.cause is None  # nothing scored yet
    rng = np.random.default_rng(0)
    causes, scores = [], []
    for t in range(260):
        x = {"a": math.sin(t / 5) + rng.normal(scale=0.2), "b": 10 + rng.normal(scale=0.2)}
        x["b"] += 6.0 if t == 250 else 0.0
        scores.append(detector.score_one(x))
        detector.learn_one(x)
        causes.append(detector.cause)
    assert all(c is None for c in causes[:20])  # the first events: no signal counted yet
    assert scores[250] >= EXTREME_FLOOR
    assert causes[250] == streamvgan.engine.Cause("extreme", "b")
    assert causes[251] == streamvgan.engine.Cause("jump", "b")
    assert {c.field for c in causes[20:250]} == {"a", "b"}  # each field drives some scores
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.cause == causes[-1]
    assert clone.fields == detector.fields


def test_detector_gives_each_field_its_score():
    # the per-field scores of the latest score_one: field b jumps by +6 at t = 250 (a new
    # extreme, b scores 1.0), a goes on as before (its own score; seeds 0-2 of the engine's
    # test gave it 0.47-0.83 at the spike); the score is the largest of them, every time
    detector = streamvgan.VAEGANDetector(seed=0, warmup_events=10_000)
    assert detector.fields is None  # nothing scored yet
    rng = np.random.default_rng(0)
    for t in range(260):
        x = {"a": math.sin(t / 5) + rng.normal(scale=0.2), "b": 10 + rng.normal(scale=0.2)}
        x["b"] += 6.0 if t == 250 else 0.0
        score = detector.score_one(x)
        fields = detector.fields
        detector.learn_one(x)
        assert detector.fields == fields  # learn_one leaves them as score_one gave them
        if t == 0:  # nothing learned yet: the first score (0.0) is not computed, no fields
            assert fields is None and score == 0.0
            continue
        assert set(fields) == {"a", "b"} and score == max(fields.values()), t
        if t == 250:
            assert fields["b"] >= EXTREME_FLOOR and fields["a"] < 0.95
    one = streamvgan.VAEGANDetector(seed=0, warmup_events=10_000)
    one.score_one({"value": 1.0})
    assert one.fields is None  # one field: no per-field scores
