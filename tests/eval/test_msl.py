"""The MSL benchmark: its metrics on hand-made cases, the protocol end to end on a synthetic
channel, and a run on real channels where ../shared/datasets/msl is present.

The real data are looked for beside the repository, like NAB (tests/eval/conftest.py), or where
the environment variable ``STREAMVGAN_MSL_DATA`` points (a checkout elsewhere)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from streamvgan.errors import ConfigurationError, InvalidInputError
from streamvgan.eval import commands, msl, report

MSL_ROOT = Path(
    os.environ.get("STREAMVGAN_MSL_DATA")
    or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "msl"
).resolve()

#: A network small and quick enough for a test; the protocol does not depend on its size.
SMALL = {"init": "random", "hidden_size": 16, "latent_size": 4, "first_fit_steps": 30, "fit_steps": 5}


@pytest.fixture(scope="module")
def msl_root() -> Path:
    if not (MSL_ROOT / "T-9.csv").exists():
        pytest.skip(
            f"MSL data not found at {MSL_ROOT}: clone the repository beside a copy of shared/ "
            "(shared/datasets/msl) or set STREAMVGAN_MSL_DATA to run the real-data tests"
        )
    return MSL_ROOT


# --- metrics on cases with known answers ---------------------------------------------------


def test_auc_of_perfect_inverse_and_tied_rankings():
    labels = np.array([0, 0, 0, 1, 1])
    assert msl.roc_auc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), labels) == 1.0
    assert msl.roc_auc(np.array([0.9, 0.8, 0.7, 0.2, 0.1]), labels) == 0.0
    assert msl.roc_auc(np.full(5, 0.4), labels) == 0.5  # all tied: each pair counts one half
    # one positive above two of three negatives, tied with the third: (2 + 0.5) / 3
    assert msl.roc_auc(np.array([0.1, 0.2, 0.5, 0.5]), np.array([0, 0, 0, 1])) == 2.5 / 3
    assert math.isnan(msl.roc_auc(np.array([0.1, 0.2]), np.array([0, 0])))  # one class only


def test_auc_of_a_random_ranking_is_one_half_and_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    aucs = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        scores = rng.integers(0, 50, size=2000).astype(float)  # many ties
        labels = rng.integers(0, 2, size=2000)
        auc = msl.roc_auc(scores, labels)
        assert auc == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
        aucs.append(auc)
    # Under no relation the AUC's sd is sqrt((n+ + n- + 1) / (12 n+ n-)) = 0.013 for 1000 of
    # each; 0.05 is almost 4 sd, so no seed should get there.
    assert max(abs(a - 0.5) for a in aucs) < 0.05


def test_sequences_are_the_runs_of_labels():
    assert msl.sequences(np.array([0, 0, 0])) == []
    assert msl.sequences(np.array([1, 1, 0, 1])) == [(0, 2), (3, 4)]
    assert msl.sequences(np.array([0, 1, 1, 1])) == [(1, 4)]


def test_a_sequence_is_caught_only_above_the_999th_percentile_of_normal_scores():
    # 1,000 normal rows: 0.000 .. 0.991 and eight 0.0 around the sequences, so the 99.9th
    # percentile lies between the two highest, 0.990 and 0.991: 0.990001
    exact = float(np.quantile(np.concatenate([np.arange(992) / 1000, np.zeros(8)]), 0.999))
    assert exact == pytest.approx(0.990001, abs=1e-12)
    maxima = [0.9901, 0.990, exact, 5.0]
    scores = np.concatenate([np.arange(992) / 1000] + [[0.0, m, 0.0] for m in maxima])
    labels = np.concatenate([np.zeros(992)] + [[0, 1, 0]] * len(maxima)).astype(int)
    hits, threshold = msl.caught(scores, labels)
    assert threshold == exact
    # above, below, equal (not above: a tie with the threshold is no catch), far above
    assert hits == [True, False, False, True]
    # at a 1% false-alarm rate the threshold is 0.98101: all four are above it
    assert msl.caught(scores, labels, rate=0.01) == ([True] * 4, pytest.approx(0.98101))


# --- reading the data ----------------------------------------------------------------------


def _write(path: Path, rows: list[tuple[str, float | str, int]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["part", "value", "label"])
        w.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("train", 1.0, 0), ("test", 1.0, 0), ("train", 1.0, 0)], "line 4: a train row after"),
        ([("train", 1.0, 1), ("test", 1.0, 0)], "line 2: a labelled train row"),
        ([("train", "nan", 0), ("test", 1.0, 0)], "line 2: part='train' value='nan'"),
        ([("valid", 1.0, 0), ("test", 1.0, 0)], "part='valid'"),
        ([("train", 1.0, 0)], "has no test rows"),
    ],
)
def test_malformed_channels_are_refused_saying_where(tmp_path, rows, message):
    with pytest.raises(InvalidInputError, match=message):
        msl.read_channel(_write(tmp_path / "X-1.csv", rows))


def test_unknown_detector_or_channel_is_refused(tmp_path):
    _write(tmp_path / "X-1.csv", [("train", 1.0, 0), ("test", 1.0, 1)])
    with pytest.raises(ConfigurationError, match="unknown detector 'nope'"):
        msl.run_msl(tmp_path, ["nope"])
    with pytest.raises(ConfigurationError, match=r"channels \['X-2'\] are not in"):
        msl.run_msl(tmp_path, ["zscore_diff"], channels=["X-2"])


# --- the protocol end to end, on a synthetic channel ---------------------------------------


def _synthetic(folder: Path, n_train: int = 300, n_test: int = 300, at: int = 200) -> Path:
    """A sine with noise, three spikes of +4 in the train part and one labelled anomaly in the
    test part: six values raised by 2.5 (inside the train part's range, so no new extreme),
    labelled with the six values after them, as MSL labels cover the anomaly's aftermath."""
    rng = np.random.default_rng(7)
    t = np.arange(n_train + n_test)
    x = np.sin(2 * np.pi * t / 50) + 0.1 * rng.standard_normal(len(t))
    x[[100, 150, 200]] += 4.0
    x[n_train + at : n_train + at + 6] += 2.5
    labels = np.zeros(len(t), dtype=int)
    labels[n_train + at : n_train + at + 12] = 1
    parts = ["train"] * n_train + ["test"] * n_test
    folder.mkdir(parents=True, exist_ok=True)
    return _write(folder / "S-0.csv", [(p, f"{v:.6g}", lab) for p, v, lab in zip(parts, x, labels)])


def test_synthetic_spike_is_caught_judged_on_test_rows_only(tmp_path):
    path = _synthetic(tmp_path)
    results = msl.run_msl(
        tmp_path, ["streamvgan", "zscore_diff"], jobs=1, params={"streamvgan": SMALL}
    )
    by_name = {r.detector: r for r in results}
    for r in results:
        (c,) = r.channels
        assert (c.n_train, c.n_test, len(c.scores), len(c.caught)) == (300, 300, 300, 1)
        # The train spikes (+4) score at or above the test anomaly (+2.5) with both detectors:
        # had train rows been judged as normal rows, the threshold would lie above the anomaly
        # (measured: not caught by either).
        assert c.caught == [True], r.detector
        assert r.share_caught == 1.0
    # The network and its calibrated signals rank the anomaly's rows above almost every normal
    # one: AUC 0.975-0.998 over model seeds 0-4, so 0.9 leaves a margin; the z-score of steps
    # flags only the steps into and out of it (0.49).
    assert by_name["streamvgan"].mean_auc > 0.9
    assert by_name["zscore_diff"].mean_auc < 0.6

    # fed in order, train then test, to a fresh detector; the test rows' scores are judged
    ch = msl.read_channel(path)
    det = msl.make_msl_detector("zscore_diff")
    scores = []
    for v in ch.values:
        scores.append(det.score_one({"value": v}))
        det.learn_one({"value": v})
    np.testing.assert_array_equal(by_name["zscore_diff"].channels[0].scores, scores[300:])
    assert by_name["zscore_diff"].mean_auc == msl.roc_auc(np.array(scores[300:]), ch.labels)


def test_detectors_of_the_benchmark_are_built_as_named():
    default = msl.make_msl_detector("streamvgan")
    assert default.params["alert_cooldown"] == 0  # NAB's cooldown is a NAB setting
    assert "anomalous_calibration_weight" not in default.params  # the engine's 1.0
    assert msl.make_msl_detector("streamvgan_hold").params["anomalous_calibration_weight"] == 0.1
    assert msl.make_msl_detector("streamvgan_model").params["signals"] == ["model"]
    jump_level = msl.make_msl_detector("streamvgan_jump_level")
    assert jump_level.params["signals"] == ["jump", "level"]
    hst = msl.make_msl_detector("hst")
    assert type(hst["HalfSpaceTrees"]).__name__ == "HalfSpaceTrees"
    assert msl.make_msl_detector("zscore", params={"window_size": 20}).window_size == 20


# --- the commands --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamvgan")
    commands.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_evaluate_msl_command_writes_table_json_and_scores(tmp_path, capsys):
    data = tmp_path / "msl"
    _synthetic(data)
    args = _parser().parse_args(
        ["evaluate", "msl", "--data", str(data), "--out", str(tmp_path / "out"),
         "--detectors", "zscore_diff,hst", "--jobs", "1"]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "out" / "msl.md").read_text().strip() == out.strip()
    assert "| zscore_diff | " in out and "| S-0 | " in out
    summary = json.loads((tmp_path / "out" / "msl.json").read_text())
    assert set(summary) == {"zscore_diff", "hst"}
    row = summary["zscore_diff"]["channels"][0]
    assert (row["channel"], row["n_test"], row["n_sequences"], row["n_caught"]) == (
        "S-0", 300, 1, 1,
    )  # fmt: skip
    stored = np.load(tmp_path / "out" / "msl_scores.npz")
    assert sorted(stored) == ["hst/S-0", "zscore_diff/S-0"]
    assert summary["zscore_diff"]["mean_roc_auc"] == pytest.approx(
        msl.roc_auc(stored["zscore_diff/S-0"], msl.read_channel(data / "S-0.csv").labels)
    )
    defaults = _parser().parse_args(["evaluate", "msl", "--data", "d", "--out", "o"])
    assert tuple(defaults.detectors) == msl.DEFAULT_DETECTORS and defaults.jobs == 2


def test_evaluate_all_includes_msl(tmp_path):
    data = tmp_path / "msl"
    _synthetic(data)
    text = report.run_all(
        tmp_path / "out", None, jobs=1, include_streamvgan=False, msl_data=data,
        forecast_series=["airline"], generation_datasets=("sines",), generation_origins=30,
        generation_steps=10,
    )  # fmt: skip
    assert "## MSL telemetry" in text and "| hst | " in text and "| zscore_diff | " in text
    assert set(json.loads((tmp_path / "out" / "msl.json").read_text())) == {"hst", "zscore_diff"}
    assert "msl" in json.loads((tmp_path / "out" / "timings.json").read_text())


# --- real channels -------------------------------------------------------------------------


def test_real_channels_are_read_as_released(msl_root):
    channels = [msl.read_channel(p) for p in msl.channel_files(msl_root)]
    assert len(channels) == 27
    assert sum(len(msl.sequences(c.labels)) for c in channels) == 36
    t9 = next(c for c in channels if c.name == "T-9")
    assert (t9.n_train, t9.n_test) == (439, 1096)
    assert msl.sequences(t9.labels) == [(780, 811), (890, 971)]


def test_real_channels_end_to_end(msl_root):
    results = msl.run_msl(msl_root, ["zscore_diff", "hst"], channels=["T-8", "T-9"], jobs=1)
    zs, hst = results
    assert [c.channel for c in zs.channels] == ["T-8", "T-9"]
    assert zs.n_sequences == hst.n_sequences == 4
    # Both are deterministic (HalfSpaceTrees seeded with 0): these are the figures of this
    # protocol; feeding the test part alone, or judging train rows too, changes them.
    assert [round(c.auc, 4) for c in zs.channels] == [0.3246, 0.6451]
    assert [round(c.auc, 4) for c in hst.channels] == [0.2524, 0.8109]
    assert (zs.n_caught, hst.n_caught) == (2, 2)


def test_evaluate_help_lists_msl(capsys):
    # argparse formats help with %: a bare "0.1%" in the subcommand's help broke `--help`
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["evaluate", "--help"])
    assert exc.value.code == 0
    assert "msl       NASA MSL telemetry" in capsys.readouterr().out
