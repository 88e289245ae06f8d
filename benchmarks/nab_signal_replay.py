"""Replay the engine's per-signal z-scores on NAB to weigh the signals without rerunning it.

Usage:
    python benchmarks/nab_signal_replay.py dump --data ../shared/datasets/nab --out DIR [--jobs 2]
    python benchmarks/nab_signal_replay.py replay --data ../shared/datasets/nab --dump DIR
        [--weights 1,0.9,0.8,0.7,0.6,0.5]
    python benchmarks/nab_signal_replay.py candidates --data ../shared/datasets/nab --dump DIR
        [--weights 0.6,1.0]
    python benchmarks/nab_signal_replay.py masking --data ../shared/datasets/nab --dump DIR
        [--weight 0.6] [--mask-weights 1,0.1,0,0.3] [--releases 10,30,never]
    python benchmarks/nab_signal_replay.py combinations --data ../shared/datasets/nab --dump DIR
    python benchmarks/nab_signal_replay.py units --data ../shared/datasets/nab --dump DIR
        [--weights 0.6,0.8,1.0,1.2]

``dump`` runs the NAB detector (``make_detector("streamvgan")``: the River adapter with
``NAB_PARAMS``) over the 58 files exactly as ``streamvgan evaluate nab`` does, and saves for
every row the calibrated z of each signal (model, jump, level), the score before the alert
cooldown and the score written. It takes about as long as ``evaluate nab`` (14 minutes on 2
cores). Set ``--params '{"model_signal_weight": 1.0}'`` to dump at another setting: the z
saved are after the weight, so dump at 1.0 to replay other weights.

``replay`` recombines the saved z-scores with the model signal's z multiplied by each weight
(and with the jump and level signals alone), applies the same calibration, new-extreme rule
and alert cooldown, and prints NAB's normalised scores. It takes seconds. It does not replay
the feedback of the score on learning (points scoring >= ``downweight_threshold`` are learned at
a lower weight), so a replayed figure differs from a full run: the weight 0.6 replayed to
66.92 from a dump at 1.0 and scored 65.95 end to end. Use it to choose, then confirm with
``streamvgan evaluate nab``.

Each row of a dump also holds the five score components, the model signal, the normaliser
and the forecast the network made after the row for its next H steps (``dump --files`` takes
globs, for a quick look at a few files). ``candidates`` uses them to weigh other model signals
(issue 15): each candidate (the surprise alone, the reconstruction alone, the critic alone,
the error of the forecasts made 1..H steps back, TadGAN/AER-style combinations of surprise
and critic) is calibrated exactly as the engine calibrates its model signal (``calibrate``
reproduces the engine's z to 1e-14) and scored alone and beside the jump and level (their z
recalibrated from their values the same way). The first row is the detector's own scores as
dumped, which equal ``streamvgan evaluate nab``'s for the same detector and parameters (one
file compared: identical). Dump with ``--params '{"signals": ["model"]}'`` to get the
``signals=model`` detector's own NAB score in the same pass.

``masking`` replays Donut-style masking of anomalous points out of the calibration (issue
15): after a row whose score before the cooldown is >= 0.999, the calibration moments of every
signal move at ``--mask-weights`` times their rate, back to the full rate after ``--releases``
such rows in a row (a shift that persists is learned). The feedback of the score on the
calibration is replayed exactly (mask weight 1 gives ``candidates``' figures: 66.54 / 56.35 /
72.81 with the default model signal at 0.6, 67.11 / 56.46 / 73.19 with the jump and level
alone); its feedback on the rest of learning is not. Every mask weight below 1 lost on the
standard profile (0.1, 0 and 0.3, released after 10, 30 or never: 29.4 to 66.4), and on the
low-FP profile all but one (jump and level, 0.8, never: 56.78, with 65.78 on the standard);
realKnownCause gained in most (up to 47.29 from 38.71).

``combinations`` joins the calibrated z of the default model signal, the jump and the level by
other rules than the engine's maximum (:data:`COMBINATIONS`: the model's positive z added to
the larger of the other two, a root of squares, the other two raised where the model's z is
above 1) and scores each (issue 15). None scored above the jump and level alone on the
standard profile (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from streamvgan.engine.signals import SignalScorer, calibrated_score, normal_quantile
from streamvgan.eval import nab_scorer
from streamvgan.eval.baselines import NAB_PARAMS, make_detector
from streamvgan.eval.nab import read_data_file

# columns of a dump: z of the model, jump and level signals, score before the cooldown, score;
# then the five components (surprise, reconstruction, critic output, jump, level), the model
# signal, the smoothed signals (3), the value, the normaliser's mean and sd before it, the
# normalised value, warm, and the forecast made after the row for the next H steps (mean, then
# scale, in the normalised units of the row; NaN when cold)
_Z, _LIKELY, _SCORE = slice(0, 3), 3, 4
_COMPS, _RAW, _SMOOTHED = slice(5, 10), 10, slice(11, 14)
_VALUE, _MEAN, _STD, _XN, _WARM, _FORECAST = 14, 15, 16, 17, 18, 19


# the critic scored at weight 0.25 (the default before critic_weight 0):
# candidate_signals recovers the critic's z from the model signal weighted (1, 1, 0.25)
DUMP_PARAMS = {"critic_weight": 0.25}


def _dump_file(data: Path, rel: str, out: Path, params: dict) -> str:
    import torch

    torch.set_num_threads(1)
    from streamvgan.engine import engine as engine_module

    rows: list[np.ndarray] = []
    original, original_one = SignalScorer.compute, engine_module.compute_one

    def record(b):
        if b.f_mean is None:
            forecast = np.full(2 * horizon, np.nan)
        else:
            forecast = np.concatenate([b.f_mean[0, :, 0], b.f_scale[0, :, 0]])
        rows.append(
            np.concatenate(
                [
                    b.z[0],
                    [b.likely[0], b.score[0]],
                    b.comps[0],
                    [b.raw[0]],
                    b.smoothed[0],
                    [b.values[0, 0], b.mean[0, 0], b.std[0, 0], b.xn[0, 0], float(b.warm)],
                    forecast,
                ]
            )
        )
        return b

    # one call per event in the River adapter: the one-value path (engine/scalar.py) since
    # issue 13, the vectorised one where the engine is told not to take it
    SignalScorer.compute = lambda self, *args: record(original(self, *args))
    engine_module.compute_one = lambda *args: record(original_one(*args))
    params = {**DUMP_PARAMS, **params}
    try:
        detector = make_detector("streamvgan", seed=0, params=params)
        horizon = detector.horizon
        for v in read_data_file(data / "data" / rel)[1]:
            x = {"value": float(v)}
            detector.score_one(x)
            detector.learn_one(x)
    finally:
        SignalScorer.compute, engine_module.compute_one = original, original_one
    np.save(out / (rel.replace("/", "__") + ".npy"), np.array(rows))
    return rel


def dump(data: Path, out: Path, jobs: int, params: dict, only: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(nab_scorer.load_windows(data / "labels/combined_windows.json"),
                   key=lambda rel: -os.path.getsize(data / "data" / rel))  # longest first
    if only:
        files = [f for f in files if any(fnmatch.fnmatch(f, pat) for pat in only.split(","))]
    params = {**DUMP_PARAMS, **params}
    (out / "params.json").write_text(json.dumps({**NAB_PARAMS, **params}))
    with ProcessPoolExecutor(jobs) as pool:
        for rel in pool.map(_dump_file, [data] * len(files), files, [out] * len(files),
                            [params] * len(files)):
            print("dumped", rel, flush=True)


def _cooldown(scores: np.ndarray, threshold: float, length: int, cap: float) -> np.ndarray:
    out, quiet = scores.copy(), 0
    for i, s in enumerate(scores):
        if quiet > 0:
            out[i], quiet = min(s, cap), quiet - 1
        elif s >= threshold:
            quiet = length
    return out


def _scored_file(cfg, rel: str, stamps: np.ndarray, ruled: np.ndarray, likely: np.ndarray,
                 z: np.ndarray, window: list) -> object:
    """One file's row for NAB's scorer: the calibrated score of the joined z ``(rows,)``
    where no rule decided, the dumped score where the new-extreme or youth rule did
    (``ruled``), then the alert cooldown, as the engine scores."""
    scores = np.where(ruled, likely, calibrated_score(z))
    scores = _cooldown(scores, cfg.cooldown_threshold, cfg.alert_cooldown, cfg.cooldown_cap)
    return nab_scorer.prepare_file(rel, stamps, scores, window)


def replay(data: Path, dumped: Path, combine: Callable[[np.ndarray], np.ndarray]) -> dict:
    """NAB scores of ``combine(z)`` (rows, 3) -> z per row, all else as dumped."""
    from streamvgan.engine import EngineConfig

    params = json.loads((dumped / "params.json").read_text())
    cfg = EngineConfig(alert_cooldown=params.get("alert_cooldown", 0))
    windows = nab_scorer.load_windows(data / "labels/combined_windows.json")
    rows = []
    for rel in sorted(windows):
        d = np.load(dumped / (rel.replace("/", "__") + ".npy"))
        z, likely = d[:, _Z], d[:, _LIKELY]
        # rows where the score is not the calibrated z (new extreme: 1.0, too young: 0.0)
        ruled = np.abs(likely - calibrated_score(z.max(1))) > 1e-12
        stamps = np.array(read_data_file(data / "data" / rel)[0], dtype="datetime64[s]")
        rows.append(_scored_file(cfg, rel, stamps, ruled, likely, combine(z), windows[rel]))
    corpus = nab_scorer.score_corpus(rows, nab_scorer.load_profiles(data / "config/profiles.json"))
    return {k: round(v, 2) for k, v in corpus.normalised().items()}


def _summary(corpus) -> dict:
    """The three profiles' normalised scores and realKnownCause's standard one."""
    out = {k: round(v, 2) for k, v in corpus.normalised().items()}
    known = corpus.per_category.get("realKnownCause", {}).get("standard")
    out["realKnownCause"] = None if known is None else round(known, 2)
    return out


def _smoothed(signal: np.ndarray, size: int) -> np.ndarray:
    """Each value's mean with the previous ``size - 1`` (kept in float32, as the engine's
    ring; the newest in float64), as the engine smooths a signal before calibrating it."""
    sig = np.nan_to_num(np.asarray(signal, dtype=np.float64), nan=0.0, posinf=1e30)
    ring = np.minimum(sig, 1e30).astype(np.float32).astype(np.float64)
    t = np.arange(len(sig))
    lo = np.maximum(0, t - (size - 1))
    cum = np.concatenate([[0.0], np.cumsum(ring)])
    return (cum[t] - cum[lo] + sig) / (t - lo + 1)


def calibrate(signal: np.ndarray, absolute_floor: bool, size: int = 10,
              halflife: float = 2000.0) -> np.ndarray:
    """The engine's calibration (``signals.py``, step 4) of one signal of one stream from its
    first event: each value's mean with the previous ``size - 1`` (kept in float32, as the
    engine's ring), against the exponentially weighted mean and sd of those means; -inf for
    the first ``2 size`` events. ``absolute_floor``: the model signal's sd floor (0.05), else
    the jump's and level's (0.05 of the mean)."""
    smoothed = _smoothed(signal, size)
    z = np.full(len(smoothed), -np.inf)
    mu = var = 0.0
    a_min = math.log(2.0) / halflife
    for i, x in enumerate(smoothed.tolist()):
        if i >= 2 * size:
            floor = (0.05 if absolute_floor else 0.05 * abs(mu)) + 1e-12
            z[i] = (x - mu) / max(math.sqrt(var), floor)
        a = max(1.0 / (i + 1.0), a_min)
        d = x - mu
        mu += a * d
        var = (1.0 - a) * (var + a * d * d)
    return z


def calibrate_masked(signals: np.ndarray, absolute: tuple[bool, ...], weights: tuple[float, ...],
                     ruled: np.ndarray, likely: np.ndarray, mask_weight: float,
                     release: int | None, threshold: float = 0.999, size: int = 10,
                     halflife: float = 2000.0) -> np.ndarray:
    """The z (rows, K) of the signals (rows, K) of one stream, calibrated as :func:`calibrate`
    calibrates each (``absolute``: its sd floor) but with Donut-style masking: after a row
    whose score before the cooldown (``likely`` where ``ruled``, else the calibrated
    ``max_k weights[k] z_k``) is >= ``threshold``, every signal's moments are updated at
    ``mask_weight`` times the rate. ``release``: after that many consecutive masked rows,
    full rate again until a row scores below (a shift that persists is learned); None: never.
    ``mask_weight`` 1 gives :func:`calibrate`'s z exactly."""
    z_masked = normal_quantile((1.0 + threshold) / 2.0)  # calibrated_score(z) >= threshold
    smoothed = [_smoothed(signals[:, k], size).tolist() for k in range(signals.shape[1])]
    z = np.full(signals.shape, -np.inf)
    mu, var = [0.0] * len(absolute), [0.0] * len(absolute)
    a_min, run = math.log(2.0) / halflife, 0
    for i in range(len(signals)):
        a = max(1.0 / (i + 1.0), a_min)
        if i >= 2 * size:
            for k, absolute_k in enumerate(absolute):
                floor = (0.05 if absolute_k else 0.05 * abs(mu[k])) + 1e-12
                z[i, k] = (smoothed[k][i] - mu[k]) / max(math.sqrt(var[k]), floor)
        if ruled[i]:
            masked = likely[i] >= threshold
        else:
            masked = max(w * zk for w, zk in zip(weights, z[i].tolist())) >= z_masked
        run = run + 1 if masked else 0
        if masked and (release is None or run <= release):
            a *= mask_weight
        for k in range(len(absolute)):
            d = smoothed[k][i] - mu[k]
            mu[k] += a * d
            var[k] = (1.0 - a) * (var[k] + a * d * d)
    return z


def horizon_errors(d: np.ndarray, min_scale: float = 0.02,
                   in_units: bool = False) -> np.ndarray:
    """(rows, H): the error of the forecast made k = 1..H rows before each row for that row,
    in units of its predicted sd, or with ``in_units`` in the stream's own units (NaN where
    there is none)."""
    h = (d.shape[1] - _FORECAST) // 2
    f_mean, f_scale = d[:, _FORECAST:_FORECAST + h], d[:, _FORECAST + h:]
    value, mean, std = d[:, _VALUE], d[:, _MEAN], d[:, _STD]
    out = np.full((len(d), h), np.nan)
    for k in range(1, h + 1):
        # made after row t - k, in the normalised units of the row after it (t - k + 1)
        mu = f_mean[:-k, k - 1] * std[1:len(d) - k + 1] + mean[1:len(d) - k + 1]
        out[k:, k - 1] = np.abs(value[k:] - mu)
        if not in_units:
            out[k:, k - 1] /= np.maximum(f_scale[:-k, k - 1], min_scale) * std[1:len(d) - k + 1]
    return out


def candidate_signals(d: np.ndarray) -> dict[str, np.ndarray]:
    """Model signals to try, from one file's dump (rows,): each is calibrated as the engine
    calibrates its model signal."""
    comps, raw = d[:, _COMPS], d[:, _RAW]
    surprise, recon, critic_out = comps[:, 0], comps[:, 1], comps[:, 2]
    # the critic's standardised output, recovered from the model signal's weighted mean
    # (1, 1, 0.25): raw = (surprise + recon + 0.25 critic_z) / 2.25 where a critic scored
    critic_z = np.where(critic_out != 0.0, 9.0 * raw - 4.0 * (surprise + recon), 0.0)
    hz = horizon_errors(d)
    with warnings.catch_warnings():  # rows with no forecast yet: all-NaN, replaced below
        warnings.simplefilter("ignore", RuntimeWarning)
        h_mean = np.where(np.isnan(hz).all(1), surprise, np.nanmean(hz, axis=1))
        h_min = np.where(np.isnan(hz).all(1), surprise, np.nanmin(hz, axis=1))
    return {
        "default (surprise + reconstruction + 0.25 critic)": raw,
        "surprise + reconstruction (critic_weight=0)": (surprise + recon) / 2,
        "surprise (predictive)": surprise,
        "reconstruction": recon,
        "critic": critic_z,
        "horizon mean (forecasts 1..H steps back)": h_mean,
        "horizon min": h_min,
    }


def replay_candidates(data: Path, dumped: Path, weights: list[float]) -> list[tuple]:
    """NAB scores of every candidate model signal alone and beside the jump and level, plus
    the TadGAN/AER-style combinations of surprise and critic."""
    from streamvgan.engine import EngineConfig

    params = json.loads((dumped / "params.json").read_text())
    cfg = EngineConfig(alert_cooldown=params.get("alert_cooldown", 0))
    weight = params.get("model_signal_weight", cfg.model_signal_weight)  # in the dumped z
    windows = nab_scorer.load_windows(data / "labels/combined_windows.json")
    profiles = nab_scorer.load_profiles(data / "config/profiles.json")
    per_file: dict[str, tuple] = {}
    check = []
    for rel in sorted(windows):
        path = dumped / (rel.replace("/", "__") + ".npy")
        if not path.exists():  # a dump of some files (--files): the corpus of those
            continue
        d = np.load(path)
        z, likely = d[:, _Z], d[:, _LIKELY]
        ruled = np.abs(likely - calibrated_score(z.max(1))) > 1e-12
        zc = {name: calibrate(sig, True) for name, sig in candidate_signals(d).items()}
        live = np.isfinite(z[:, 0])
        check.append(np.abs(weight * zc["default (surprise + reconstruction + 0.25 critic)"][live]
                            - z[live, 0]).max(initial=0.0))
        # the jump's and the level's z, recalibrated from their values (a dump with
        # signals=model has -inf there)
        z = np.stack([z[:, 0], calibrate(d[:, _COMPS][:, 3], False),
                      calibrate(d[:, _COMPS][:, 4], False)], axis=1)
        zs, zk = zc["surprise (predictive)"], zc["critic"]
        with np.errstate(invalid="ignore"):
            zc["AER: (z surprise + z critic) / 2"] = (zs + zk) / 2
            zc["AER: sqrt(z+ surprise * z+ critic)"] = np.sqrt(
                np.maximum(zs, 0) * np.maximum(zk, 0))
        stamps = np.array(read_data_file(data / "data" / rel)[0], dtype="datetime64[s]")
        per_file[rel] = (z, ruled, likely, zc, stamps)
    print(f"recalibrated default model signal vs dumped z: max |diff| {max(check):.2e}",
          flush=True)
    names = list(next(iter(per_file.values()))[3])
    results = []
    # the detector's own scores, as dumped (equal to `streamvgan evaluate nab` of the same
    # detector and parameters: the same River adapter, seed 0, a fresh one per file)
    rows = [nab_scorer.prepare_file(rel, stamps, np.load(
                dumped / (rel.replace("/", "__") + ".npy"))[:, _SCORE], windows[rel])
            for rel, (_, _, _, _, stamps) in per_file.items()]
    own = nab_scorer.score_corpus(rows, profiles)
    results.append(("as dumped", json.dumps(params), _summary(own)))
    print("per category, as dumped (standard / low FP / low FN):")
    for cat, row in own.per_category.items():
        cells = " / ".join("-" if row[p] is None else f"{row[p]:.2f}" for p in profiles)
        print(f"  {cat}: {cells}", flush=True)
    print(results[-1], flush=True)

    def corpus(combine: Callable) -> dict:
        rows = []
        for rel, (z, ruled, likely, zc, stamps) in per_file.items():
            zz = np.nan_to_num(combine(z, zc), nan=-np.inf)
            rows.append(_scored_file(cfg, rel, stamps, ruled, likely, zz, windows[rel]))
        return _summary(nab_scorer.score_corpus(rows, profiles))

    for name in names:
        for w in weights:
            alone = corpus(lambda z, zc, n=name, w=w: w * zc[n])
            results.append((name, f"alone; weight {w}", alone))
        for w in weights:
            results.append((name, f"max with jump, level; weight {w}",
                            corpus(lambda z, zc, n=name, w=w: np.maximum(
                                w * np.nan_to_num(zc[n], nan=-np.inf), z[:, 1:].max(1)))))
            print(results[-1], flush=True)
        print(results[-1], flush=True)
    results.append(("none", "jump, level", corpus(lambda z, zc: z[:, 1:].max(1))))
    return results


_MODEL = "surprise + reconstruction (critic_weight=0)"  # the engine's default model signal


def _load_signals(data: Path, dumped: Path) -> tuple:
    """The engine configuration, windows and profiles of a dump, and per file the raw
    signals (rows, 3: the default model signal, jump, level), the rows the new-extreme and
    youth rules decided (``ruled``), the scores before the cooldown and the timestamps."""
    from streamvgan.engine import EngineConfig

    params = json.loads((dumped / "params.json").read_text())
    cfg = EngineConfig(alert_cooldown=params.get("alert_cooldown", 0))
    windows = nab_scorer.load_windows(data / "labels/combined_windows.json")
    profiles = nab_scorer.load_profiles(data / "config/profiles.json")
    per_file: dict[str, tuple] = {}
    for rel in sorted(windows):
        path = dumped / (rel.replace("/", "__") + ".npy")
        if not path.exists():  # a dump of some files (--files): the corpus of those
            continue
        d = np.load(path)
        z, likely = d[:, _Z], d[:, _LIKELY]
        ruled = np.abs(likely - calibrated_score(z.max(1))) > 1e-12
        signals = np.stack([candidate_signals(d)[_MODEL], d[:, _COMPS][:, 3],
                            d[:, _COMPS][:, 4]], axis=1)
        stamps = np.array(read_data_file(data / "data" / rel)[0], dtype="datetime64[s]")
        per_file[rel] = (signals, ruled, likely, stamps)
    return cfg, windows, profiles, per_file


def replay_masking(data: Path, dumped: Path, weight: float, mask_weights: list[float],
                   releases: list[int | None]) -> list[tuple]:
    """NAB scores with the calibration masked (:func:`calibrate_masked`) at every mask weight
    and release, for the default model signal (surprise + reconstruction, critic_weight=0) at
    ``weight`` beside the jump and level, and for the jump and level alone (issue 15)."""
    cfg, windows, profiles, per_file = _load_signals(data, dumped)
    results = []
    for name, columns, weights in ((f"{_MODEL}; weight {weight}, max with jump, level",
                                    [0, 1, 2], (weight, 1.0, 1.0)),
                                   ("none: jump, level", [1, 2], (1.0, 1.0))):
        for mask_weight in mask_weights:
            for release in releases if mask_weight != 1.0 else [None]:
                rows = []
                for rel, (signals, ruled, likely, stamps) in per_file.items():
                    z = calibrate_masked(signals[:, columns], tuple(c == 0 for c in columns),
                                         weights, ruled, likely, mask_weight, release)
                    zz = (np.asarray(weights) * z).max(1)
                    rows.append(_scored_file(cfg, rel, stamps, ruled, likely, zz,
                                             windows[rel]))
                summary = _summary(nab_scorer.score_corpus(rows, profiles))
                results.append((name, mask_weight, "never" if release is None else release,
                                summary))
    return results


def _positive(z: np.ndarray) -> np.ndarray:
    return np.maximum(np.nan_to_num(z, neginf=0.0), 0.0)


#: Ways to join the calibrated z of (model, jump, level) into one z, beside the engine's
#: maximum (issue 15): ``name -> function of z (rows, 3)``.
COMBINATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jump, level: max (no network)": lambda z: z[:, 1:].max(1),
    "max(0.6 model, jump, level) (the engine's default)": lambda z: np.maximum(
        0.6 * z[:, 0], z[:, 1:].max(1)),
    **{f"max(jump, level) + {w} model+": (lambda z, w=w: z[:, 1:].max(1) + w * _positive(
        z[:, 0])) for w in (0.15, 0.3, 0.5)},
    **{f"sqrt(jump+^2 + level+^2 + ({w} model+)^2)": (lambda z, w=w: np.sqrt(
        _positive(z[:, 1]) ** 2 + _positive(z[:, 2]) ** 2 + (w * _positive(z[:, 0])) ** 2))
       for w in (0.3, 0.6)},
    **{f"max(jump, level) x {1 + w:g} where model z > 1": (lambda z, w=w: z[:, 1:].max(1)
        * np.where(_positive(z[:, 0]) > 1.0, 1.0 + w, 1.0)) for w in (0.3, 0.6)},
}


def replay_combinations(data: Path, dumped: Path) -> list[tuple]:
    """NAB scores of each of :data:`COMBINATIONS`: the default model signal, the jump and
    the level, each calibrated as the engine calibrates it, joined by the rule (issue 15)."""
    cfg, windows, profiles, per_file = _load_signals(data, dumped)
    z_of = {rel: np.stack([calibrate(signals[:, 0], True), calibrate(signals[:, 1], False),
                           calibrate(signals[:, 2], False)], axis=1)
            for rel, (signals, _, _, _) in per_file.items()}
    results = []
    for name, combine in COMBINATIONS.items():
        rows = []
        for rel, (_, ruled, likely, stamps) in per_file.items():
            with np.errstate(invalid="ignore"):
                zz = np.nan_to_num(combine(z_of[rel]), nan=-np.inf)
            rows.append(_scored_file(cfg, rel, stamps, ruled, likely, zz, windows[rel]))
        results.append((name, _summary(nab_scorer.score_corpus(rows, profiles))))
    return results


def unit_signals(d: np.ndarray) -> dict[str, np.ndarray]:
    """One file's forecast errors in the stream's own units (rows,), each the last value's
    error where the network had made no forecast yet (cold): the network's one-step error
    (the engine's ``model_signal="forecast_error"``), the mean of its errors for the row
    over the forecasts made 1..H rows back, the last value's error ``|x_t - x_{t-1}|`` and
    the engine's jump (one or two seasons back once a season is found), as dumped."""
    last = np.concatenate([[0.0], np.abs(np.diff(d[:, _VALUE]))])
    errors = horizon_errors(d, in_units=True)
    made = np.isfinite(errors)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: replaced below
        horizon = np.where(made.any(1), np.nanmean(errors, axis=1), last)
    return {
        "network, one step (model_signal=forecast_error)": np.where(made[:, 0], errors[:, 0],
                                                                    last),
        "network, mean over the forecasts made 1..H back": horizon,
        "last value |x_t - x_{t-1}|": last,
        "the engine's jump (seasonal once found)": d[:, _COMPS][:, 3],
    }


def replay_units(data: Path, dumped: Path, weights: list[float]) -> list[tuple]:
    """NAB scores of each of :func:`unit_signals`, calibrated as the engine calibrates the
    jump (the same units, the same relative sd floor), alone and beside the jump and level
    at each weight (issue 15)."""
    cfg, windows, profiles, per_file = _load_signals(data, dumped)
    units, rules = {}, {}
    for rel, (signals, _, _, _) in per_file.items():
        d = np.load(dumped / (rel.replace("/", "__") + ".npy"))
        units[rel] = {name: calibrate(sig, False) for name, sig in unit_signals(d).items()}
        rules[rel] = np.maximum(calibrate(signals[:, 1], False), calibrate(signals[:, 2], False))

    def corpus(z_of: Callable[[str], np.ndarray]) -> dict:
        rows = []
        for rel, (_, ruled, likely, stamps) in per_file.items():
            zz = np.nan_to_num(z_of(rel), nan=-np.inf)
            rows.append(_scored_file(cfg, rel, stamps, ruled, likely, zz, windows[rel]))
        return _summary(nab_scorer.score_corpus(rows, profiles))

    results = [("none: jump, level", "", corpus(lambda rel: rules[rel]))]
    for name in next(iter(units.values())):
        for w in weights:
            results.append((name, f"alone; weight {w:g}",
                            corpus(lambda rel, n=name, w=w: w * units[rel][n])))
        for w in weights:
            results.append((name, f"max with jump, level; weight {w:g}", corpus(
                lambda rel, n=name, w=w: np.maximum(w * units[rel][n], rules[rel]))))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--data", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--jobs", type=int, default=2)
    d.add_argument("--params", type=json.loads, default={"model_signal_weight": 1.0})
    d.add_argument("--files", default=None, help="comma-separated patterns (default: all)")
    c = sub.add_parser("candidates")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--dump", type=Path, required=True)
    c.add_argument("--weights", default="0.6,1.0")
    m = sub.add_parser("masking")
    m.add_argument("--data", type=Path, required=True)
    m.add_argument("--dump", type=Path, required=True)
    m.add_argument("--weight", type=float, default=0.6)
    m.add_argument("--mask-weights", default="1,0.1,0,0.3")
    m.add_argument("--releases", default="10,30,never")
    k = sub.add_parser("combinations")
    k.add_argument("--data", type=Path, required=True)
    k.add_argument("--dump", type=Path, required=True)
    u = sub.add_parser("units")
    u.add_argument("--data", type=Path, required=True)
    u.add_argument("--dump", type=Path, required=True)
    u.add_argument("--weights", default="0.6,0.8,1.0,1.2")
    r = sub.add_parser("replay")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--dump", type=Path, required=True)
    r.add_argument("--weights", default="1,0.9,0.8,0.7,0.6,0.5")
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.data, args.out, args.jobs, args.params, args.files)
        return
    if args.command == "candidates":
        results = replay_candidates(
            args.data, args.dump, [float(w) for w in args.weights.split(",")]
        )
        print("| model signal | how | standard | low FP | low FN | realKnownCause |")
        print("|---|---|---|---|---|---|")
        for name, how, s in results:
            print(f"| {name} | {how} | {s['standard']:.2f} | {s['reward_low_FP_rate']:.2f} | "
                  f"{s['reward_low_FN_rate']:.2f} | {s['realKnownCause']} |", flush=True)
        return
    if args.command == "masking":
        releases = [None if r == "never" else int(r) for r in args.releases.split(",")]
        results = replay_masking(args.data, args.dump, args.weight,
                                 [float(w) for w in args.mask_weights.split(",")], releases)
        print("| signals | mask weight | release after | standard | low FP | low FN | "
              "realKnownCause |\n|---|---|---|---|---|---|---|")
        for name, mask_weight, release, s in results:
            print(f"| {name} | {mask_weight:g} | {release} | {s['standard']:.2f} | "
                  f"{s['reward_low_FP_rate']:.2f} | {s['reward_low_FN_rate']:.2f} | "
                  f"{s['realKnownCause']} |", flush=True)
        return
    if args.command == "combinations":
        print("| rule | standard | low FP | low FN | realKnownCause |\n|---|---|---|---|---|")
        for name, s in replay_combinations(args.data, args.dump):
            print(f"| {name} | {s['standard']:.2f} | {s['reward_low_FP_rate']:.2f} | "
                  f"{s['reward_low_FN_rate']:.2f} | {s['realKnownCause']} |", flush=True)
        return
    if args.command == "units":
        print("| error, in the stream's units | how | standard | low FP | low FN | "
              "realKnownCause |\n|---|---|---|---|---|---|")
        for name, how, s in replay_units(args.data, args.dump,
                                         [float(w) for w in args.weights.split(",")]):
            print(f"| {name} | {how} | {s['standard']:.2f} | {s['reward_low_FP_rate']:.2f} | "
                  f"{s['reward_low_FN_rate']:.2f} | {s['realKnownCause']} |", flush=True)
        return
    print("| model signal weight | standard | low FP | low FN |\n|---|---|---|---|")
    cases = [(w, lambda z, w=w: np.maximum(w * z[:, 0], z[:, 1:].max(1)))
             for w in map(float, args.weights.split(","))]
    cases.append(("none (jump, level)", lambda z: z[:, 1:].max(1)))
    for name, combine in cases:
        s = replay(args.data, args.dump, combine)
        print(f"| {name} | {s['standard']:.2f} | {s['reward_low_FP_rate']:.2f} | "
              f"{s['reward_low_FN_rate']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
