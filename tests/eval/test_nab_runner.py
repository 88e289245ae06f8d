"""The NAB runner end to end on two small NAB files, and the online property it relies on."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil

import numpy as np
import pytest

from streamvgan.eval import nab, nab_scorer, scoring
from streamvgan.eval.baselines import make_detector

FILES = ["realAdExchange/exchange-2_cpc_results.csv", "realTraffic/speed_7578.csv"]
# Small enough for CI; the benchmark itself runs with the model's defaults.
SMALL_STREAMVGAN = {"init": "random", "first_fit_steps": 30, "fit_steps": 5, "hidden_size": 8}


def _detectors():
    try:
        import streamvgan.river  # noqa: F401
    except ImportError:
        return ["hst", "zscore"]
    return ["hst", "zscore", "streamvgan"]


@pytest.fixture(scope="module")
def run(nab_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("nab")
    runs = nab.run_nab(
        nab_root, out, _detectors(), files=FILES, jobs=2, seed=0,
        params={"streamvgan": SMALL_STREAMVGAN},
    )
    return out, runs


def test_writes_nab_results_files(run, nab_root):
    out, runs = run
    windows = nab_scorer.load_windows(nab_root / "labels" / "combined_windows.json")
    for det in _detectors():
        for name in FILES:
            category, fname = name.split("/")
            path = out / det / category / f"{det}_{fname}"
            with path.open() as fh:
                rows = list(csv.DictReader(fh))
            with (nab_root / "data" / name).open() as fh:
                data = list(csv.DictReader(fh))
            assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
            assert len(rows) == len(data)
            assert [r["timestamp"] for r in rows] == [r["timestamp"] for r in data]
            assert [r["value"] for r in rows] == [r["value"] for r in data]
            scores = np.array([float(r["anomaly_score"]) for r in rows])
            assert np.all(np.isfinite(scores)) and scores.min() >= 0 and scores.max() <= 1
            assert scores.std() > 0  # the detector reacted to something
            ts = np.array([r["timestamp"] for r in rows], dtype="datetime64[s]")
            expected = np.zeros(len(rows), dtype=int)
            for start, end in windows[name]:
                expected[(ts >= start) & (ts <= end)] = 1
            assert [int(r["label"]) for r in rows] == expected.tolist()


def test_scores_json_has_finite_scores_per_profile(run):
    out, runs = run
    combined = json.loads((out / "scores.json").read_text())
    assert set(combined) == set(_detectors())
    for det in _detectors():
        flat = json.loads((out / det / "scores.json").read_text())
        assert set(flat) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
        assert flat == combined[det]
        assert all(isinstance(v, float) and math.isfinite(v) and v <= 100 for v in flat.values())
        details = json.loads((out / det / "details.json").read_text())
        assert details["n_rows"] == 1624 + 1127
        assert details["seconds_in_files"] > 0 and details["wall_seconds_all_detectors"] > 0
        assert set(details["per_category"]) == {"realAdExchange", "realTraffic"}


def test_table_puts_run_beside_published(run, nab_root):
    _, runs = run
    table = nab.format_tables(runs, nab.NABCorpus(nab_root).published())
    assert "| contextOSE | 69.90 | 66.98 | 73.18 | published |" in table
    assert "this run, 2 files" in table
    assert "Per category, zscore" in table


def test_scores_are_strictly_online(nab_root, tmp_path):
    """Truncating the file after row k changes none of the first k scores."""
    name = FILES[1]
    short = tmp_path / "short.csv"
    with (nab_root / "data" / name).open() as fh:
        lines = fh.readlines()
    short.write_text("".join(lines[:601]))
    for det in ("zscore", "hst"):
        full = nab.run_file(nab.FileTask(det, {}, 0, nab_root / "data" / name, name,
                                         tmp_path / "full_out.csv", []))
        part = nab.run_file(nab.FileTask(det, {}, 0, short, name, tmp_path / "part_out.csv", []))
        np.testing.assert_array_equal(full.scores[:600], part.scores)


def test_fresh_detector_per_file(nab_root, tmp_path):
    """The same file run twice (after another file) gives identical scores."""
    data = tmp_path / "nab"
    shutil.copytree(nab_root / "labels", data / "labels")
    shutil.copytree(nab_root / "config", data / "config")
    (data / "data" / "realTraffic").mkdir(parents=True)
    shutil.copy(nab_root / "data" / FILES[1], data / "data" / FILES[1])
    a = nab.run_nab(data, tmp_path / "a", ["zscore"], jobs=1)[0].files[0].scores
    b = nab.run_nab(data, tmp_path / "b", ["zscore"], jobs=1)[0].files[0].scores
    np.testing.assert_array_equal(a, b)


def test_unknown_detector_is_a_clear_error(nab_root, tmp_path):
    with pytest.raises(ValueError, match="unknown detector 'nope'; choose from"):
        nab.run_nab(nab_root, tmp_path, ["nope"], files=FILES[:1], jobs=1)
    with pytest.raises(ValueError, match="no NAB data file"):
        nab.run_nab(nab_root, tmp_path, ["zscore"], files=["nothing/*"], jobs=1)
    with pytest.raises(ValueError, match="--data must be a NAB checkout"):
        nab.run_nab(tmp_path, tmp_path, ["zscore"], jobs=1)


def test_rolling_zscore_uses_only_the_past():
    det = make_detector("zscore", params={"window_size": 5, "min_samples": 2})
    assert det.score_one({"value": 100.0}) == 0.0  # nothing learnt yet
    for v in [1.0, 2.0, 1.0, 2.0]:
        det.learn_one({"value": v})
    assert det.score_one({"value": 1.5}) == 0.0
    z = 2.5 / 0.5  # (4 - 1.5) / std of [1, 2, 1, 2]
    assert det.score_one({"value": 4.0}) == pytest.approx(z / (1 + z))
    with pytest.raises(ValueError, match="univariate"):
        det.score_one({"a": 1.0, "b": 2.0})


@pytest.mark.parametrize(
    ("name", "signals", "model_signal"),
    [
        ("streamvgan", ("model", "jump", "level"), "reconstruction"),
        ("streamvgan_predictive", ("model", "jump", "level"), "predictive"),
        ("streamvgan_model", ("model",), "reconstruction"),
        ("streamvgan_model_predictive", ("model",), "predictive"),
    ],
)
def test_model_signal_variants_differ_from_the_default_in_their_switches_only(
    name, signals, model_signal
):
    from streamvgan.engine import EngineConfig

    det = make_detector(name, params={"init": "pretrained"})  # --params reach every variant
    config = EngineConfig.from_params(**det.params)
    assert (config.signals, config.model_signal) == (signals, model_signal)
    assert config.init == "pretrained"
    assert config.alert_cooldown == 30  # NAB's setting, as for the default detector


def test_scoring_helpers_score_before_learning_and_zero_non_finite_scores(caplog):
    # one pair of helpers serves NAB (every row judged), MSL and SKAB (the judged part)
    class Flaky:
        def __init__(self):
            self.seen: list[float] = []

        def score_one(self, x):
            return float("nan") if x["value"] < 0 else float(len(self.seen))

        def learn_one(self, x):
            self.seen.append(x["value"])

    det = Flaky()
    values = [-1.0, 2.0, -3.0, 4.0]
    raw, seconds = scoring.score_series(det, ({"value": v} for v in values))
    assert np.isnan(raw[[0, 2]]).all() and raw[[1, 3]].tolist() == [1.0, 3.0]  # scored first
    assert det.seen == values and seconds >= 0
    with caplog.at_level(logging.WARNING):
        judged, n_bad = scoring.finite_scores(raw[1:], "flaky on f.csv")  # row 0 not judged
    assert judged.tolist() == [1.0, 0.0, 3.0] and n_bad == 1
    assert "flaky on f.csv: 1 non-finite scores (first at row 1) ranked as 0.0" in caplog.text
