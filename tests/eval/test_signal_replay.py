"""The NAB signal replay (benchmarks/nab_signal_replay.py) recomputes the engine's calibration
from dumped signal values; docs/evaluation.md's table of model signals tried rests on that
being exact. These tests dump a short synthetic series through the real detector and check
the replay against what the engine itself computed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPLAY = Path(__file__).resolve().parents[2] / "benchmarks" / "nab_signal_replay.py"


@pytest.fixture(scope="module")
def replay():
    spec = importlib.util.spec_from_file_location("nab_signal_replay", REPLAY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dump(replay, tmp_path: Path, values: list[str], params: dict) -> np.ndarray:
    """``values`` (as written in the CSV, every 5 minutes) dumped through the real River
    detector with ``params``."""
    data = tmp_path / "nab"
    (data / "data" / "synthetic").mkdir(parents=True)
    stamps = np.datetime64("2020-01-01T00:00:00") + np.arange(len(values)) * np.timedelta64(
        300, "s"
    )
    lines = ["timestamp,value"] + [
        f"{str(s).replace('T', ' ')},{v}" for s, v in zip(stamps, values)
    ]
    (data / "data" / "synthetic" / "s.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "dump"
    out.mkdir()
    replay._dump_file(data, "synthetic/s.csv", out, params)
    return np.load(out / "synthetic__s.csv.npy")


@pytest.fixture(scope="module")
def d(replay, tmp_path_factory) -> np.ndarray:
    """One dumped file (model signal at weight 1.0): a noisy sine with a level shift and a
    spike, through the real River detector."""
    rng = np.random.default_rng(0)
    t = np.arange(500)
    values = 10 + 3 * np.sin(2 * np.pi * t / 48) + rng.normal(0, 0.3, len(t))
    values[300:] += 4.0
    values[420] += 15.0
    return _dump(
        replay,
        tmp_path_factory.mktemp("replay"),
        [f"{v:.6f}" for v in values],
        {"model_signal_weight": 1.0},
    )


def test_the_replay_calibration_is_the_engine_s(replay, d):
    assert len(d) == 500 and d.shape[1] > replay._FORECAST
    z = d[:, replay._Z]
    comps = d[:, replay._COMPS]
    recalibrated = [
        replay.calibrate(d[:, replay._RAW], True),  # the model signal
        replay.calibrate(comps[:, 3], False),  # the jump
        replay.calibrate(comps[:, 4], False),  # the level
    ]
    for k, zk in enumerate(recalibrated):
        live = np.isfinite(z[:, k])
        assert live.sum() >= 470, k  # -inf only for the first 2 x smoothing events
        np.testing.assert_allclose(zk[live], z[live, k], rtol=0, atol=1e-9)
        assert np.all(np.isneginf(zk[~live]))
    # the level shift at row 300 stands out in the replayed jump z
    jump = recalibrated[1]
    assert jump[300:310].max() > 2 * jump[60:295].max()


def test_the_one_step_horizon_error_is_the_surprise(replay, d):
    errors = replay.horizon_errors(d)
    h = (d.shape[1] - replay._FORECAST) // 2
    assert errors.shape == (500, h)
    surprise = d[:, replay._COMPS][:, 0]
    # away from the clip of normalised values (+-20) and the first rows, the error of the
    # forecast made one row back, in the stream's units, is the engine's surprise
    ok = np.abs(d[:, replay._XN]) < 19.0
    ok[:30] = False
    np.testing.assert_allclose(errors[ok, 0], surprise[ok], rtol=1e-4, atol=1e-4)
    assert np.isnan(errors[:h, h - 1]).all() and np.isfinite(errors[h + 30 :, h - 1]).all()


def test_the_candidates_include_the_detector_s_own_signal(replay, d):
    signals = replay.candidate_signals(d)
    assert list(signals)[0].startswith("default")
    np.testing.assert_array_equal(signals[next(iter(signals))], d[:, replay._RAW])
    for name, values in signals.items():
        assert values.shape == (500,), name
        assert np.isfinite(values[30:]).all(), name
    # the critic's z, recovered from the model signal's weights (1, 1, 0.25), lies within the
    # engine's clip of it ([-5, 20]): other weights in the engine would throw it out of range
    critic = signals["critic"][d[:, replay._COMPS][:, 2] != 0.0]
    assert len(critic) > 400
    assert critic.min() >= -5.0 - 1e-6 and critic.max() <= 20.0 + 1e-6
    assert critic.std() > 0.1  # and it varies: not a constant left by a wrong formula


def test_the_masked_calibration(replay, d):
    comps = d[:, replay._COMPS]
    signals = np.stack([d[:, replay._RAW], comps[:, 3], comps[:, 4]], axis=1)
    z = d[:, replay._Z]
    likely = d[:, replay._LIKELY]
    ruled = np.abs(likely - replay.calibrated_score(z.max(1))) > 1e-12
    args = (signals, (True, False, False), (1.0, 1.0, 1.0), ruled, likely)
    # mask weight 1: the calibration of each signal alone, bit for bit
    full = replay.calibrate_masked(*args, 1.0, None)
    for k in range(3):
        np.testing.assert_array_equal(full[:, k], replay.calibrate(signals[:, k], k == 0))
    # masked, the level shift at row 300 and the spike at 420 inflate the calibration less:
    # the z after them are higher; released at once, it is the full calibration again
    masked = replay.calibrate_masked(*args, 0.1, None)
    assert (masked[421:] >= full[421:] - 1e-9).mean() > 0.9
    assert masked[425:, 1].max() > full[425:, 1].max()
    np.testing.assert_array_equal(replay.calibrate_masked(*args, 0.1, 0), full)


def test_the_combinations_include_the_engine_s_rules_and_only_add_the_model(replay, d):
    z = d[:, replay._Z][30:]  # the first rows are -inf before the calibration counts
    assert np.isfinite(z).all()
    rules = replay.COMBINATIONS
    jump_level = z[:, 1:].max(1)
    np.testing.assert_array_equal(rules["jump, level: max (no network)"](z), jump_level)
    engine = "max(0.6 model, jump, level) (the engine's default)"
    np.testing.assert_array_equal(rules[engine](z), np.maximum(0.6 * z[:, 0], jump_level))
    # every other rule raises the jump and level only where the model signal is raised (on
    # the positive side: a z <= 0 scores 0 whatever the rule)
    quiet_model = z[:, 0] <= 0.0
    floor = np.maximum(jump_level, 0.0)
    for name, rule in rules.items():
        joined = rule(z)
        assert joined.shape == (len(z),) and np.isfinite(joined).all(), name
        assert (np.maximum(joined, 0.0) >= floor - 1e-12).all(), name
        if name != engine:  # the root of squares joins the jump and level by their own rule
            without = floor if "sqrt" not in name else np.hypot(*np.maximum(z[:, 1:], 0.0).T)
            np.testing.assert_allclose(
                np.maximum(joined, 0.0)[quiet_model], without[quiet_model], atol=1e-12, err_msg=name
            )
    assert quiet_model.sum() > 50 and (~quiet_model).sum() > 50  # both kinds of rows are seen


def test_the_forecast_error_in_the_stream_s_units_is_the_engine_s(replay, d, tmp_path):
    # the dump of the same series with model_signal="forecast_error": the replay's one-step
    # error in the stream's units (from the dumped forecasts) is the engine's raw model
    # signal, and calibrated as the jump it is the engine's z of the model signal
    units = _dump(
        replay,
        tmp_path,
        [repr(float(v)) for v in d[:, replay._VALUE]],
        {"model_signal": "forecast_error", "model_signal_weight": 1.0},
    )
    np.testing.assert_array_equal(units[:, replay._VALUE], d[:, replay._VALUE])
    one_step = replay.unit_signals(units)["network, one step (model_signal=forecast_error)"]
    raw = units[:, replay._RAW]
    assert (raw[:10] == 0).all()  # the jump's warm-up
    np.testing.assert_allclose(one_step[10:], raw[10:], rtol=1e-9, atol=1e-9)
    assert np.abs(raw[10:] - units[10:, replay._COMPS][:, 3]).max() > 0.5  # not the jump
    z = units[:, replay._Z][:, 0]
    live = np.isfinite(z)
    assert live.sum() >= 470
    np.testing.assert_allclose(replay.calibrate(raw, False)[live], z[live], rtol=0, atol=1e-9)
