"""Running one River anomaly detector over a series, the way every benchmark here does:
each value scored before it is learnt, and scores that cannot be ranked made visible."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamvgan.errors import ConfigurationError

log = logging.getLogger(__name__)

__all__ = ["csv_files", "detector_from_table", "finite_scores", "score_series"]

#: A benchmark's own detectors: ``name -> (factory, fixed keyword arguments)``, where the
#: factory is a NAB detector's name (:data:`streamvgan.eval.baselines.DETECTORS`) or one of
#: the benchmark's ``local`` factories.
DetectorTable = Mapping[str, tuple[str, dict[str, Any]]]


def detector_from_table(
    table: DetectorTable,
    name: str,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    local: Mapping[str, Callable[..., Any]] | None = None,
) -> Any:
    """A fresh detector by name: one of ``table``'s or of the NAB detectors; ``params``
    override its fixed arguments. ``local`` holds factories only this benchmark has.

    >>> detector_from_table({"z20": ("zscore", {"window_size": 20})}, "z20").window_size
    20
    """
    from streamvgan.eval.baselines import DETECTORS, make_detector

    if name not in table and name not in DETECTORS:
        raise ConfigurationError(
            f"unknown detector {name!r}; choose from {', '.join(table)} "
            f"(or a NAB detector: {', '.join(DETECTORS)})"
        )
    factory, fixed = table.get(name, (name, {}))
    merged = {**fixed, **(params or {})}
    if local is not None and factory in local:
        return local[factory](**merged)
    return make_detector(factory, seed=seed, params=merged)


def csv_files(
    data: Path,
    names: list[str] | None,
    *,
    kind: str,
    folder: str,
    numbered: bool = False,
) -> list[Path]:
    """The CSV files of a benchmark folder (all, or those whose stem is in ``names``), sorted
    by name, or numerically with ``numbered`` (then only files named by a number count).
    ``kind`` names a file in errors ("channel"), ``folder`` says which folder --data wants.
    """
    if not data.is_dir():
        raise ConfigurationError(f"{data} is not a directory; --data must be {folder}")
    stems = [p.stem for p in data.glob("*.csv") if not numbered or p.stem.isdigit()]
    found = {s: data / f"{s}.csv" for s in sorted(stems, key=int if numbered else str)}
    if not found:
        label = f"numbered {kind}" if numbered else kind
        raise ConfigurationError(f"no {label} CSV under {data}; --data must be {folder}")
    if names is None:
        return list(found.values())
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigurationError(
            f"{kind}s {missing} are not in {data}; choose from {', '.join(found)}"
        )
    return [found[n] for n in names]


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
