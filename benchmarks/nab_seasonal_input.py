"""Would the network's own signal catch NAB's anomalies if it saw the season? (issue 15)

Usage:
    python benchmarks/nab_seasonal_input.py --data ../shared/datasets/nab --dump DIR [--jobs 2]

``DIR`` is a dump of the ``signals=model`` detector made by ``nab_signal_replay.py dump
--params '{"signals": ["model"]}'``: it holds, per row, the engine's normalised input, the
normaliser, the jump and level values, and where the new-extreme rule fired.

Diagnosis that motivates it: the network's signal alone (58.11 on NAB) misses most of
``artificialWithAnomaly`` (a daily peak that does not come, comes lower, or a flat day). Its
one-step forecast sees a few hours of history through its GRU state, not the day before, so
an expected rise that does not happen surprises it no more than any quiet step. The jump
signal sees the season (``|x_t - x_{t-P}|`` once a season P is found): that is where the
model-free signals win.

The experiment, with the shipped pretrained weights and no online fine-tuning (the same in
every arm, so the arms differ only in what the network reads):

* ``value``: the network reads the engine's normalised value (what it reads today);
* ``seasonal difference``: once a season P is found (the engine's own search, every half
  window of 600 values), it reads ``x_t - x_{t-P}`` instead, normalised by its own running
  mean and sd as the engine normalises values; before that, the value;

and in each arm the model signal is the engine's: (surprise + reconstruction) / 2, with the
surprise the error of the forecast made before the value, in units of its predicted sd. Each is
calibrated exactly as the engine calibrates its model signal (``nab_signal_replay.calibrate``),
then scored alone and beside the dumped jump and level, with the dump's new-extreme rule and
young rows, the cooldown and NAB's scorer, as ``nab_signal_replay.py candidates`` does. A
replay: the score does not feed back into learning.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from nab_signal_replay import (  # noqa: E402
    _COMPS,
    _LIKELY,
    _VALUE,
    _XN,
    _Z,
    _cooldown,
    _summary,
    calibrate,
)

from streamvgan.engine import EngineConfig  # noqa: E402
from streamvgan.engine.signals import calibrated_score  # noqa: E402
from streamvgan.engine.stats import ew_alpha, find_season, robust_std, season_search_due  # noqa: E402
from streamvgan.eval import nab_scorer  # noqa: E402
from streamvgan.eval.nab import read_data_file  # noqa: E402

ARMS = (
    "value",
    "seasonal difference",
    "first difference",
    "seasonal, else first difference",
)
WINDOW = 600  # the River adapter's season_window


def _network():
    import torch

    from streamvgan.nn.model import RecurrentVAEGAN
    from streamvgan.nn.pretrained import load_pretrained, shipped_path

    torch.set_num_threads(1)
    config, weights, _ = load_pretrained(shipped_path())
    model = RecurrentVAEGAN(config)
    model.load_state_dict(weights)
    return model.eval()


def _difference_inputs(
    values: np.ndarray, xn: np.ndarray, cfg: EngineConfig, seasonal: bool, first: bool
) -> np.ndarray:
    """The input per row of the difference arms (see the module docstring): ``x_t - x_{t-P}``
    once a season P is found (``seasonal``), else ``x_t - x_{t-1}`` (``first``) or the
    normalised value; each difference normalised by its own running mean and sd (winsorised
    at 4 sd, as the engine's normaliser), restarted when the lag changes."""
    out = xn.copy()
    period, lag, mean, var, count = 0, 0, 0.0, 0.0, 0
    for t in range(len(values)):
        if lag and t >= lag:
            d = values[t] - values[t - lag]
            sd = float(robust_std(np.array(mean), np.array(var)))
            out[t] = 0.0 if count < 2 else max(-cfg.clip, min(cfg.clip, (d - mean) / sd))
            a = float(ew_alpha(np.array(count), cfg.normaliser_halflife))
            dev = d - mean
            dev_w = max(-4 * sd, min(4 * sd, dev)) if count >= 2 else dev
            mean += a * dev
            var = (1 - a) * (var + a * dev_w**2)
            count += 1
        if seasonal and season_search_due(np.array(t + 1), WINDOW):
            period = find_season(values[max(0, t + 1 - WINDOW) : t + 1], cfg.season_min_correlation)
        want = period if seasonal and period else (1 if first else 0)
        if want != lag:
            lag, mean, var, count = want, 0.0, 0.0, 0
    return out


def _model_signal(model, inputs: np.ndarray) -> np.ndarray:
    """(surprise + reconstruction) / 2 of the network reading ``inputs`` one row at a time."""
    import torch

    cfg = model.config
    h = torch.zeros(1, cfg.hidden_size)
    fm, fs = 0.0, 1.0
    signal = np.zeros(len(inputs))
    x = torch.zeros(1, 1)
    for t, v in enumerate(inputs.tolist()):
        x[0, 0] = v
        out = model.step(x, h)
        surprise = abs(v - fm) / max(fs, cfg.min_scale)
        signal[t] = (surprise + float(out.recon_error[0])) / 2
        h = out.h
        fm, fs = float(out.forecast_mean[0, 0, 0]), float(out.forecast_scale[0, 0, 0])
    return signal


def _file(dump: Path, rel: str) -> tuple[str, dict[str, np.ndarray]]:
    model = _network()
    d = np.load(dump / (rel.replace("/", "__") + ".npy"))
    cfg = EngineConfig()
    xn = d[:, _XN]
    v = d[:, _VALUE]
    arms = {
        "value": xn,
        "seasonal difference": _difference_inputs(v, xn, cfg, seasonal=True, first=False),
        "first difference": _difference_inputs(v, xn, cfg, seasonal=False, first=True),
        "seasonal, else first difference": _difference_inputs(v, xn, cfg, True, True),
    }
    return rel, {name: calibrate(_model_signal(model, x), True) for name, x in arms.items()}


def dump_rows(data: Path, dump: Path, files: list[str]) -> dict[str, tuple]:
    """Per NAB file of a ``signals=model`` dump: where its new-extreme rule fired (``ruled``),
    its scores (``likely``), the larger of the calibrated jump and level signals (``jl``) and
    the rows' timestamps."""
    per_file = {}
    for rel in files:
        d = np.load(dump / (rel.replace("/", "__") + ".npy"))
        z, likely = d[:, _Z], d[:, _LIKELY]
        ruled = np.abs(likely - calibrated_score(z.max(1))) > 1e-12
        jl = np.maximum(calibrate(d[:, _COMPS][:, 3], False), calibrate(d[:, _COMPS][:, 4], False))
        stamps = np.array(read_data_file(data / "data" / rel)[0], dtype="datetime64[s]")
        per_file[rel] = (ruled, likely, jl, stamps)
    return per_file


def score_combined(per_file: dict, arms: dict, combine, cfg, windows, profiles):
    """NAB's result for the calibrated signal ``combine(arms[file], jl)`` per file, with the
    dump's new-extreme rule and the cooldown, as the engine scores."""
    rows = []
    for rel, (ruled, likely, jl, stamps) in per_file.items():
        zz = np.nan_to_num(combine(arms[rel], jl), nan=-np.inf)
        scores = np.where(ruled, likely, calibrated_score(zz))
        scores = _cooldown(scores, cfg.cooldown_threshold, cfg.alert_cooldown, cfg.cooldown_cap)
        rows.append(nab_scorer.prepare_file(rel, stamps, scores, windows[rel]))
    return nab_scorer.score_corpus(rows, profiles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--dump", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--weights", default="0.6,1.0")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    params = json.loads((args.dump / "params.json").read_text())
    cfg = EngineConfig(alert_cooldown=params.get("alert_cooldown", 0))
    windows = nab_scorer.load_windows(args.data / "labels/combined_windows.json")
    profiles = nab_scorer.load_profiles(args.data / "config/profiles.json")
    files = sorted(windows)
    with ProcessPoolExecutor(args.jobs) as pool:
        arms = dict(pool.map(_file, [args.dump] * len(files), files))
    per_file = dump_rows(args.data, args.dump, files)

    def corpus(combine) -> dict:
        result = score_combined(per_file, arms, combine, cfg, windows, profiles)
        summary = _summary(result)
        summary["artificialWithAnomaly"] = round(
            result.per_category["artificialWithAnomaly"]["standard"], 2
        )
        return summary

    print("| network reads | weight | alone | max with jump, level |")
    print("|---|---|---|---|")
    for arm in ARMS:
        for w in weights:
            alone = corpus(lambda a, jl, arm=arm, w=w: w * a[arm])
            beside = corpus(lambda a, jl, arm=arm, w=w: np.maximum(w * a[arm], jl))
            print(f"| {arm} | {w} | {alone} | {beside} |", flush=True)
    print(f"| (none) | | | {corpus(lambda a, jl: jl)} |")


if __name__ == "__main__":
    main()
