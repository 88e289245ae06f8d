"""The NAB scorer against NAB's published numbers and against a brute-force sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamvgan.eval import nab_scorer as ns

STANDARD = ns.CostProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
LOW_FN = ns.CostProfile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0)


@pytest.fixture(scope="module")
def reference_files(nab_root):
    windows = ns.load_windows(nab_root / "labels" / "combined_windows.json")
    files = []
    for name in sorted(windows):
        category, fname = name.split("/")
        path = nab_root / "reference_results" / "contextOSE" / category / f"contextOSE_{fname}"
        ts, scores = ns.read_results_csv(path)
        files.append(ns.prepare_file(name, ts, scores, windows[name]))
    return files


def test_reproduces_published_contextOSE_scores(nab_root, reference_files, monkeypatch):
    files = reference_files
    # Count the scorings at one threshold: the optimum comes from one vectorised sweep per
    # profile, so the only such calls are the per-file breakdown at the chosen threshold (one
    # per file and profile), never one per candidate threshold (NAB's 365k rows hold ~100k).
    calls: list[int] = []
    at_threshold = ns.score_at_threshold

    def counted(files_, profile, threshold):
        files_ = list(files_)
        calls.append(len(files_))
        return at_threshold(files_, profile, threshold)

    monkeypatch.setattr(ns, "score_at_threshold", counted)
    profiles = ns.load_profiles(nab_root / "config" / "profiles.json")
    result = ns.score_corpus(files, profiles)
    published = json.loads((nab_root / "results" / "final_results.json").read_text())["contextOSE"]

    got = result.normalised()
    assert {k: round(v, 2) for k, v in got.items()} == {
        "standard": 69.90,
        "reward_low_FP_rate": 66.98,
        "reward_low_FN_rate": 73.18,
    }
    for profile, expected in published.items():
        assert got[profile] == pytest.approx(expected, abs=1e-6)
    assert sum(f.n_windows for f in files) == 116
    assert calls == [1] * (len(files) * len(profiles))


def test_raw_scores_at_published_thresholds(nab_root, reference_files):
    files = reference_files
    profiles = ns.load_profiles(nab_root / "config" / "profiles.json")
    thresholds = json.loads((nab_root / "config" / "thresholds.json").read_text())["contextOSE"]
    expected = {"standard": 46.167, "reward_low_FP_rate": 39.38696, "reward_low_FN_rate": 22.67222}
    for name, raw in expected.items():
        thr = thresholds[name]["threshold"]
        assert ns.score_at_threshold(files, profiles[name], thr) == pytest.approx(raw, abs=1e-4)


def test_row_weights_follow_the_scaled_sigmoid():
    ts = np.arange(200).astype("datetime64[m]")
    f = ns.prepare_file("c/a.csv", ts, np.zeros(200), [(ts[100], ts[109])])
    assert f.n_rows == 200 and len(f.scores) == 170  # 15% probation = 30 rows dropped
    w = np.concatenate([np.full(30, np.nan), f.weights])
    assert w[30] == -1.0  # before any window: a full false positive
    assert w[100] == pytest.approx(float(ns.scaled_sigmoid(-1.0)))  # first row of the window
    assert w[109] == pytest.approx(float(ns.scaled_sigmoid(-0.1)))  # last row
    assert w[110] == pytest.approx(float(ns.scaled_sigmoid(1 / 9)))  # just after: cheap FP
    assert w[199] == -1.0  # more than 3 window widths later
    assert np.all(np.diff(w[100:110]) < 0)  # earlier detections are worth more


def test_probation_hides_detections_but_windows_still_count():
    ts = np.arange(100).astype("datetime64[m]")
    scores = np.zeros(100)
    scores[5] = 1.0  # a false positive inside the probationary period (15 rows)
    f = ns.prepare_file("c/a.csv", ts, scores, [(ts[50], ts[59])])
    assert ns.score_at_threshold([f], STANDARD, 0.5) == -1.0  # missed window, FP ignored
    scores[50] = 1.0
    f = ns.prepare_file("c/a.csv", ts, scores, [(ts[50], ts[59])])
    assert ns.score_at_threshold([f], STANDARD, 0.5) == pytest.approx(1.0)


def test_probationary_length_is_capped():
    assert ns.probationary_length(1000) == 150
    assert ns.probationary_length(22695) == 750


@pytest.mark.parametrize("profile", [STANDARD, LOW_FN])
def test_sweep_matches_brute_force(profile):
    rng = np.random.default_rng(3)
    files = []
    for k in range(4):
        n = int(rng.integers(300, 600))
        ts = np.arange(n).astype("datetime64[m]")
        scores = rng.choice(np.linspace(0, 1, 40), size=n)  # many ties
        starts = sorted(rng.choice(np.arange(60, n - 40), size=k % 3, replace=False))
        windows = [(ts[s], ts[s + 20]) for s in starts]
        windows = [w for i, w in enumerate(windows) if i == 0 or w[0] > windows[i - 1][1]]
        files.append(ns.prepare_file(f"c{k}/f.csv", ts, scores, windows))
    best = ns.optimise_threshold(files, profile)
    candidates = np.unique(np.concatenate([f.scores for f in files]))
    brute = max(ns.score_at_threshold(files, profile, t) for t in candidates)
    brute = max(brute, -profile.fn_weight * sum(f.n_windows for f in files))
    assert best.raw_score == pytest.approx(brute, abs=1e-9)
    assert ns.score_at_threshold(files, profile, best.threshold) == pytest.approx(brute, abs=1e-9)


def test_normalisation_bounds():
    assert ns.normalise(-10.0, 10, STANDARD) == 0.0
    assert ns.normalise(10.0, 10, STANDARD) == 100.0
    assert ns.normalise(0.0, 10, LOW_FN) == pytest.approx(100 * 20 / 30)


def test_rejects_bad_input():
    ts = np.arange(10).astype("datetime64[m]")
    with pytest.raises(ValueError, match="finite"):
        ns.prepare_file("c/a.csv", ts, np.full(10, np.nan), [])
    with pytest.raises(ValueError, match="9 anomaly scores for 10"):
        ns.prepare_file("c/a.csv", ts, np.zeros(9), [])
