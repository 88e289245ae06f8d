"""Running one River anomaly detector over a series, the way every benchmark here does:
each value scored before it is learnt, and scores that cannot be ranked made visible."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["finite_scores", "score_series"]


def score_series(detector: Any, events: Iterable[dict[str, float]]) -> tuple[np.ndarray, float]:
    """``detector.score_one(x)`` then ``detector.learn_one(x)`` for each event in order: the
    scores, and the seconds it took.

    >>> from streamvgan.eval.baselines import RollingZScore
    >>> scores, _ = score_series(RollingZScore(min_samples=2), [{"v": 1.0}, {"v": 2.0}, {"v": 9.0}])
    >>> scores.round(3).tolist()
    [0.0, 0.0, 0.938]
    """
    out: list[float] = []
    t0 = time.perf_counter()
    for x in events:
        out.append(detector.score_one(x))
        detector.learn_one(x)
    return np.array(out, dtype=np.float64), time.perf_counter() - t0


def finite_scores(scores: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """``scores`` with every non-finite one replaced by 0.0 (ranked lowest, since it cannot be
    ranked at all), logged as a warning naming ``what``; and how many there were."""
    bad = ~np.isfinite(scores)
    n_bad = int(bad.sum())
    if n_bad:
        log.warning(
            "%s: %d non-finite scores (first at row %d) ranked as 0.0",
            what,
            n_bad,
            int(np.flatnonzero(bad)[0]),
        )
        scores = np.where(bad, 0.0, scores)
    return scores, n_bad
