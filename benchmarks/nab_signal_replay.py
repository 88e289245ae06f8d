"""Replay the engine's per-signal z-scores on NAB to weigh the signals without rerunning it.

Usage:
    python benchmarks/nab_signal_replay.py dump --data ../shared/datasets/nab --out DIR [--jobs 2]
    python benchmarks/nab_signal_replay.py replay --data ../shared/datasets/nab --dump DIR
        [--weights 1,0.9,0.8,0.7,0.6,0.5]

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
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from streamvgan.engine.signals import SignalScorer, calibrated_score
from streamvgan.eval import nab_scorer
from streamvgan.eval.baselines import NAB_PARAMS, make_detector
from streamvgan.eval.nab import read_data_file

# columns of a dump: z of the model, jump and level signals, score before the cooldown, score
_Z, _LIKELY, _SCORE = slice(0, 3), 3, 4


def _dump_file(data: Path, rel: str, out: Path, params: dict) -> str:
    import torch

    torch.set_num_threads(1)
    from streamvgan.engine import engine as engine_module

    rows: list[np.ndarray] = []
    original, original_one = SignalScorer.compute, engine_module.compute_one

    def record(b):
        rows.append(np.concatenate([b.z[0], [b.likely[0], b.score[0]]]))
        return b

    # one call per event in the River adapter: the one-value path (engine/scalar.py) since
    # issue 13, the vectorised one where the engine is told not to take it
    SignalScorer.compute = lambda self, *args: record(original(self, *args))
    engine_module.compute_one = lambda *args: record(original_one(*args))
    try:
        detector = make_detector("streamvgan", seed=0, params=params)
        for v in read_data_file(data / "data" / rel)[1]:
            x = {"value": float(v)}
            detector.score_one(x)
            detector.learn_one(x)
    finally:
        SignalScorer.compute, engine_module.compute_one = original, original_one
    np.save(out / (rel.replace("/", "__") + ".npy"), np.array(rows))
    return rel


def dump(data: Path, out: Path, jobs: int, params: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(nab_scorer.load_windows(data / "labels/combined_windows.json"),
                   key=lambda rel: -os.path.getsize(data / "data" / rel))  # longest first
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
        scores = np.where(ruled, likely, calibrated_score(combine(z)))
        scores = _cooldown(scores, cfg.cooldown_threshold, cfg.alert_cooldown, cfg.cooldown_cap)
        stamps = np.array(read_data_file(data / "data" / rel)[0], dtype="datetime64[s]")
        rows.append(nab_scorer.prepare_file(rel, stamps, scores, windows[rel]))
    corpus = nab_scorer.score_corpus(rows, nab_scorer.load_profiles(data / "config/profiles.json"))
    return {k: round(v, 2) for k, v in corpus.normalised().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--data", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--jobs", type=int, default=2)
    d.add_argument("--params", type=json.loads, default={"model_signal_weight": 1.0})
    r = sub.add_parser("replay")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--dump", type=Path, required=True)
    r.add_argument("--weights", default="1,0.9,0.8,0.7,0.6,0.5")
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.data, args.out, args.jobs, args.params)
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
