"""How far can a frozen reference of normal rank SKAB's rows? (issue 15)

Usage:
    python benchmarks/skab_reference_scores.py --data ../shared/datasets/skab-other

Model-free scores, each fitted once on a run's first rows and then frozen (SKAB's own protocol
fits once on the training rows), judged like ``streamvgan evaluate skab``: ROC AUC over the
pooled judged rows and F1 at the best single threshold (the same functions and the same
judged rows). They bound what a detector whose reference is those rows can reach, so they are
what the engine's ``reference_events`` is read against (docs/evaluation.md, "A reference of
normal").

Per run, on the sensors standardised by the reference rows' mean and sd (``z``):

* ``max abs z``: the largest |z| over the 8 sensors;
* ``Mahalanobis``: ``z' C^-1 z``, ``C`` the reference rows' correlation, shrunk by 10% to the
  identity;
* ``regression residual``: each sensor regressed (least squares) on the other seven over the
  reference rows; the largest absolute residual in units of its reference sd;
* ``PCA Q``: the squared distance of ``z`` from the span of the reference rows' 4 leading
  principal components;

each raw, and smoothed over 10 rows then standardised on a log scale against its own values on
the reference rows (so that runs are comparable when pooled). Two references: each run's own
training rows (``Run.n_train``: the first 400, and 104 in run 2, whose anomaly begins there),
and the first 400 rows of every run (one parameter set for all runs, as the detector has).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from streamvgan.eval.msl import roc_auc
from streamvgan.eval.skab import TRAIN_ROWS, Run, best_f1, read_run, run_files

log = logging.getLogger("skab_reference_scores")

SMOOTHING = 10  # rows averaged before the log-scale standardisation
COMPONENTS = 4  # principal components kept by the PCA score
SHRINKAGE = 0.1  # of the reference correlation towards the identity (Mahalanobis)


def max_abs_z(z: np.ndarray, ref: int) -> np.ndarray:
    return np.abs(z).max(axis=1)


def mahalanobis(z: np.ndarray, ref: int) -> np.ndarray:
    c = (1 - SHRINKAGE) * np.cov(z[:ref].T) + SHRINKAGE * np.eye(z.shape[1])
    return np.einsum("ij,jk,ik->i", z, np.linalg.inv(c), z)


def regression_residual(z: np.ndarray, ref: int) -> np.ndarray:
    out = np.zeros_like(z)
    ones = np.ones((len(z), 1))
    for j in range(z.shape[1]):
        others = np.hstack([np.delete(z, j, axis=1), ones])
        w = np.linalg.lstsq(others[:ref], z[:ref, j], rcond=None)[0]
        residual = z[:, j] - others @ w
        out[:, j] = np.abs(residual) / (residual[:ref].std() + 1e-9)
    return out.max(axis=1)


def pca_q(z: np.ndarray, ref: int) -> np.ndarray:
    _, vectors = np.linalg.eigh(np.cov(z[:ref].T))
    p = vectors[:, -COMPONENTS:]
    return ((z - (z @ p) @ p.T) ** 2).sum(axis=1)


SCORES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "max abs z": max_abs_z,
    "Mahalanobis": mahalanobis,
    "regression residual": regression_residual,
    "PCA Q": pca_q,
}


def on_log_scale(score: np.ndarray, ref: int) -> np.ndarray:
    """``score`` averaged over the last :data:`SMOOTHING` rows, then standardised on a log
    scale against its values on the reference rows."""
    smoothed = np.convolve(score, np.ones(SMOOTHING) / SMOOTHING)[: len(score)]
    log_score = np.log(smoothed + 1e-9)
    return (log_score - log_score[:ref].mean()) / (log_score[:ref].std() + 1e-9)


def run_scores(run: Run, ref: int) -> dict[str, np.ndarray]:
    """Every score of one run (all rows) with the run's first ``ref`` rows as reference."""
    x = run.values
    z = (x - x[:ref].mean(axis=0)) / (x[:ref].std(axis=0) + 1e-9)
    out: dict[str, np.ndarray] = {}
    for name, score in SCORES.items():
        raw = score(z, ref)
        out[name] = raw
        out[f"{name}, smoothed, log scale"] = on_log_scale(raw, ref)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="../shared/datasets/skab-other")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = [read_run(path) for path in run_files(args.data)]
    print("| reference | score | pooled ROC AUC | best-threshold F1 |")
    print("|---|---|---|---|")
    for reference in ("each run's training rows", f"the first {TRAIN_ROWS} rows"):
        pooled: dict[str, list[np.ndarray]] = {}
        labels = []
        for run in runs:
            ref = run.n_train if reference.startswith("each") else TRAIN_ROWS
            for name, score in run_scores(run, ref).items():
                pooled.setdefault(name, []).append(score[run.n_train :])
            labels.append(run.labels[run.n_train :])
        y = np.concatenate(labels)
        for name, parts in pooled.items():
            s = np.concatenate(parts)
            print(f"| {reference} | {name} | {roc_auc(s, y):.3f} | {best_f1(s, y)[0]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
