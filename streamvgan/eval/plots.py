"""PNG plots of the evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamvgan._optional import require
from streamvgan.eval import nab_scorer

__all__ = ["plot_forecasts", "plot_generation", "plot_nab_file"]


def _plt() -> Any:
    matplotlib = require("matplotlib", extra="eval", purpose="the evaluation's plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_nab_file(
    path: str | Path,
    name: str,
    timestamps: np.ndarray,
    values: np.ndarray,
    scores: dict[str, np.ndarray],
    thresholds: dict[str, float],
    windows: list[tuple[np.datetime64, np.datetime64]],
) -> Path:
    """The series with its labelled windows shaded, then each detector's score with its
    corpus threshold (standard profile) and the detections it makes after the probation."""
    plt = _plt()
    n = len(scores)
    fig, axes = plt.subplots(n + 1, 1, figsize=(11, 2.0 * (n + 1)), sharex=True)
    probation = nab_scorer.probationary_length(len(timestamps))
    for ax in axes:
        for start, end in windows:
            ax.axvspan(start, end, color="tab:red", alpha=0.15, lw=0)
        ax.axvline(timestamps[probation], color="grey", ls=":", lw=1)
    axes[0].plot(timestamps, values, lw=0.7, color="black")
    axes[0].set_title(f"{name}: labelled windows shaded, probation ends at the dotted line")
    for ax, (det, s) in zip(axes[1:], scores.items()):
        thr = thresholds[det]
        ax.plot(timestamps, s, lw=0.6)
        ax.axhline(thr, color="tab:orange", lw=0.8)
        hits = np.flatnonzero(s >= thr)
        hits = hits[hits >= probation]
        ax.plot(timestamps[hits], s[hits], "v", color="tab:red", ms=4)
        ax.set_ylabel(det, fontsize=8)
        ax.set_ylim(-0.05, 1.05)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_forecasts(path: str | Path, series: str, example: dict[str, Any], tail: int = 96) -> Path:
    """The end of a series with each model's forecast from the last origin and its band."""
    plt = _plt()
    y = np.asarray(example["values"], dtype=float)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    models = example["models"]
    origin = max((m.get("origin", 0) for m in models.values()), default=len(y))
    start = max(0, origin - tail)
    end = min(len(y), origin + max((len(m.get("mean", [])) for m in models.values()), default=0))
    ax.plot(range(start, end), y[start:end], color="black", lw=1, label="observed")
    for name, m in models.items():
        if not m:
            continue
        t = np.arange(m["origin"], m["origin"] + len(m["mean"]))
        line = ax.plot(t, m["mean"], lw=1, label=name)[0]
        lo, hi = np.asarray(m["q10"], dtype=float), np.asarray(m["q90"], dtype=float)
        if np.isfinite(lo).all() and name.startswith("streamvgan"):
            ax.fill_between(t, lo, hi, color=line.get_color(), alpha=0.2)
    ax.axvline(origin, color="grey", ls=":", lw=1)
    ax.set_title(f"{series}: forecasts from the last origin (10-90% band shaded for streamvgan)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_generation(path: str | Path, dataset: str, examples: dict[str, Any]) -> Path:
    """Real windows next to each generator's windows from the same origins (scaled)."""
    plt = _plt()
    names = list(examples)
    k = len(next(iter(examples.values()))["real"]) if names else 0
    fig, axes = plt.subplots(1, max(k, 1), figsize=(3 * max(k, 1), 2.8), sharey=True)
    axes = np.atleast_1d(axes)
    for j, ax in enumerate(axes):
        first = examples[names[0]]
        ctx = first["context"]
        real = np.asarray(first["real"][j])
        ax.plot(real, color="black", lw=1.5, label="real")
        for name in names:
            ax.plot(np.asarray(examples[name]["synthetic"][j]), lw=1, label=name)
        ax.axvline(ctx - 0.5, color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{dataset}: context | continuation (real vs generated), min-max scaled")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
