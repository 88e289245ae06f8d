"""The Numenta Anomaly Benchmark score, computed with numpy.

This follows the scoring method described in Lavin & Ahmad, "Evaluating Real-time Anomaly
Detection Algorithms -- the Numenta Anomaly Benchmark" (ICMLA 2015) and in the NAB
repository's documentation; it is written from that description, not from NAB's code.

For every data file:

* The first ``min(floor(0.15 * n), 0.15 * 5000)`` rows are the probationary period: detections
  there are neither rewarded nor penalised (windows still count).
* A row inside a labelled window at position ``i`` of a window spanning rows ``[l, r]`` has the
  weight ``sigma(-(r - i + 1) / (r - l + 1))`` where ``sigma(x) = 2 / (1 + exp(5x)) - 1`` is the
  scaled sigmoid (so the earliest row weighs about 0.987 and the last about 0).
* A row outside every window weighs ``-1`` before the first window and
  ``sigma(|i - r_prev| / (w_prev - 1))`` after one (``r_prev`` and ``w_prev`` the right end and
  width of the previous window), so false positives right after a window cost little and those
  more than three window widths away cost the full ``-1``.
* At a threshold ``t`` a row is a detection iff ``anomaly_score >= t``. Each window scores
  ``tp_weight`` times the weight of its earliest detection, or ``-fn_weight`` if it has none;
  each detection outside windows adds ``fp_weight`` times its (negative) weight.

The threshold is optimised per cost profile over the whole corpus (one threshold for all
files) by an exhaustive sweep over every distinct anomaly score, and the corpus total ``S`` is
normalised as ``100 * (S - S_null) / (S_perfect - S_null)`` with ``S_null = -fn_weight * W`` and
``S_perfect = tp_weight * W`` for ``W`` windows. The sweep is one sort of all rows of the
corpus plus a cumulative sum, so scoring NAB's 365k rows takes well under a second per profile.

>>> import numpy as np
>>> ts = np.arange(100).astype("datetime64[m]")
>>> scores = np.zeros(100)
>>> scores[60] = 0.9                      # inside the window, at its start
>>> scores[72] = 0.8                      # a false positive 3 rows after the window
>>> f = prepare_file("toy/a.csv", ts, scores, [(ts[60], ts[69])])
>>> standard = CostProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
>>> round(score_at_threshold([f], standard, 0.85), 4)  # the window's first row
1.0
>>> round(score_at_threshold([f], standard, 0.5), 4)   # plus the cheap false positive
0.925
>>> result = optimise_threshold([f], standard)
>>> result.threshold, round(result.raw_score, 4), round(result.normalised, 2)
(0.9, 1.0, 100.0)

"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamvgan.errors import ConfigurationError, InvalidInputError

__all__ = [
    "PROFILE_NAMES",
    "CorpusScore",
    "CostProfile",
    "FileRows",
    "ProfileScore",
    "load_profiles",
    "load_windows",
    "normalise",
    "optimise_threshold",
    "prepare_file",
    "probationary_length",
    "read_results_csv",
    "scaled_sigmoid",
    "score_at_threshold",
    "score_corpus",
]

#: The three cost profiles NAB publishes, in the order its scoreboard lists them.
PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

#: Fraction of each file used as the probationary period, and the row count it is capped at
#: (``probationary_percent * 5000``), as NAB defines it.
PROBATIONARY_PERCENT = 0.15
_PROBATION_CAP_ROWS = 5000


@dataclass(frozen=True)
class CostProfile:
    """The weights of one NAB application profile (``config/profiles.json``)."""

    name: str
    tp_weight: float = 1.0
    fp_weight: float = 0.11
    fn_weight: float = 1.0
    tn_weight: float = 1.0


@dataclass(frozen=True)
class FileRows:
    """The scored rows of one file, ready for threshold sweeps.

    ``scores`` and ``weights`` hold only the rows after the probationary period; ``window``
    gives the index (within this file) of the window a row lies in, or -1.
    """

    name: str
    scores: np.ndarray
    weights: np.ndarray
    window: np.ndarray
    n_windows: int
    n_rows: int

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0] if "/" in self.name else ""


@dataclass(frozen=True)
class ProfileScore:
    """The corpus score of one profile at its optimised threshold."""

    profile: str
    threshold: float
    raw_score: float
    normalised: float
    n_windows: int
    per_file: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CorpusScore:
    """Scores of one detector for every profile, with a per-category breakdown."""

    profiles: dict[str, ProfileScore]
    per_category: dict[str, dict[str, float | None]]

    def normalised(self) -> dict[str, float]:
        """``{profile: normalised score}``, the content of NAB's ``final_results.json``."""
        return {name: p.normalised for name, p in self.profiles.items()}


def scaled_sigmoid(x: np.ndarray | float) -> np.ndarray:
    """NAB's scaled sigmoid ``2 / (1 + exp(5x)) - 1``, forced to ``-1`` for ``x > 3``.

    >>> [round(float(v), 4) for v in scaled_sigmoid(np.array([-1.0, 0.0, 1.0, 3.5]))]
    [0.9866, 0.0, -0.9866, -1.0]
    """
    x = np.asarray(x, dtype=float)
    # exp overflows to inf for very negative inputs, which gives the right limit (-1 + 2 = 1).
    with np.errstate(over="ignore"):
        out = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x > 3.0, -1.0, out)


def probationary_length(n_rows: int, percent: float = PROBATIONARY_PERCENT) -> int:
    """Rows at the start of a file where detections are ignored.

    >>> probationary_length(4032), probationary_length(22695)
    (604, 750)
    """
    return int(min(math.floor(percent * n_rows), percent * _PROBATION_CAP_ROWS))


def _window_indices(
    timestamps: np.ndarray, windows: Sequence[tuple[np.datetime64, np.datetime64]]
) -> list[tuple[int, int]]:
    limits = []
    for start, end in sorted(windows):
        left = int(np.searchsorted(timestamps, start, side="left"))
        right = int(np.searchsorted(timestamps, end, side="right")) - 1
        if right < left:
            raise InvalidInputError(
                f"window [{start}, {end}] contains no row of the file; check that the labels "
                "belong to this data file"
            )
        limits.append((left, right))
    return limits


def prepare_file(
    name: str,
    timestamps: np.ndarray,
    scores: np.ndarray,
    windows: Sequence[tuple[np.datetime64, np.datetime64]],
    probationary_percent: float = PROBATIONARY_PERCENT,
) -> FileRows:
    """Compute each row's NAB weight and window membership for one file.

    ``timestamps`` must be sorted ``datetime64`` values; ``windows`` are inclusive
    ``(start, end)`` timestamps as in ``labels/combined_windows.json``.
    """
    timestamps = np.asarray(timestamps)
    scores = np.asarray(scores, dtype=float)
    n = len(timestamps)
    if len(scores) != n:
        raise InvalidInputError(
            f"{name}: {len(scores)} anomaly scores for {n} timestamps; write one score per row"
        )
    if not np.all(np.isfinite(scores)):
        raise InvalidInputError(f"{name}: anomaly scores contain NaN or inf; scores must be finite")
    idx = np.arange(n)
    weights = np.full(n, -1.0)
    window = np.full(n, -1, dtype=np.int64)
    limits = _window_indices(timestamps, windows)
    for w, (left, right) in enumerate(limits):
        width = right - left + 1
        inside = slice(left, right + 1)
        weights[inside] = scaled_sigmoid(-(right - idx[inside] + 1) / width)
        window[inside] = w
        # Rows after this window, up to the next window, are weighed by their distance from it.
        next_left = limits[w + 1][0] if w + 1 < len(limits) else n
        after = slice(right + 1, next_left)
        weights[after] = scaled_sigmoid(np.abs(idx[after] - right) / max(width - 1, 1))
    start = probationary_length(n, probationary_percent)
    return FileRows(
        name=name,
        scores=scores[start:],
        weights=weights[start:],
        window=window[start:],
        n_windows=len(limits),
        n_rows=n,
    )


#: The weight of a detection on a window's first row; true-positive weights are divided by it so
#: that detecting every window at its start scores exactly ``tp_weight`` per window, the
#: "perfect" score used for normalisation (this matches NAB's published per-file scores).
_MAX_TP = float(scaled_sigmoid(-1.0))


def score_at_threshold(files: Iterable[FileRows], profile: CostProfile, threshold: float) -> float:
    """The raw NAB score summed over ``files`` at one threshold."""
    total = 0.0
    for f in files:
        detected = f.scores >= threshold
        fp = detected & (f.window < 0)
        total += profile.fp_weight * float(f.weights[fp].sum())
        for w in range(f.n_windows):
            hits = detected & (f.window == w)
            if hits.any():
                total += profile.tp_weight * float(f.weights[hits].max()) / _MAX_TP
            else:
                total -= profile.fn_weight
    return total


def normalise(raw: float, n_windows: int, profile: CostProfile) -> float:
    """``100 * (raw - null) / (perfect - null)``, with null and perfect as NAB defines them."""
    null = -profile.fn_weight * n_windows
    perfect = profile.tp_weight * n_windows
    if perfect == null:
        raise InvalidInputError(
            "cannot normalise a score over files without any labelled window; "
            "report the raw score instead"
        )
    return 100.0 * (raw - null) / (perfect - null)


def optimise_threshold(files: Sequence[FileRows], profile: CostProfile) -> ProfileScore:
    """Find the threshold that maximises the corpus score, by an exhaustive vectorised sweep.

    Sorting every row by decreasing anomaly score, lowering the threshold past a row changes
    the total by that row's contribution: ``fp_weight * weight`` outside windows, and inside a
    window the increase of ``tp_weight * max(weight of detections)`` over its previous value
    (starting from ``-fn_weight``). A cumulative sum evaluated at the end of each run of equal
    scores gives the total at every distinct threshold.
    """
    if not files:
        raise InvalidInputError("no files to score; pass at least one prepared file")
    scores = np.concatenate([f.scores for f in files])
    weights = np.concatenate([f.weights for f in files])
    offsets = np.cumsum([0] + [f.n_windows for f in files[:-1]])
    window = np.concatenate(
        [np.where(f.window >= 0, f.window + off, -1) for f, off in zip(files, offsets)]
    )
    n_windows = int(sum(f.n_windows for f in files))
    null = -profile.fn_weight * n_windows

    order = np.argsort(-scores, kind="stable")
    s_sorted = scores[order]
    w_sorted = window[order]
    u_sorted = weights[order]
    delta = np.where(w_sorted < 0, profile.fp_weight * u_sorted, 0.0)
    in_window = np.flatnonzero(w_sorted >= 0)
    if len(in_window):
        # Group the in-window rows by window, keeping the score order within each group.
        grouped = in_window[np.argsort(w_sorted[in_window], kind="stable")]
        ids = w_sorted[grouped]
        bounds = np.flatnonzero(np.diff(ids)) + 1
        for chunk in np.split(grouped, bounds):
            best = profile.tp_weight * np.maximum.accumulate(u_sorted[chunk]) / _MAX_TP
            before = np.concatenate(([-profile.fn_weight], best[:-1]))
            delta[chunk] = best - before
    totals = null + np.cumsum(delta)
    # A threshold equal to a score detects every row with that score: read the total at the
    # last row of each run of equal scores.
    run_ends = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    candidates = totals[run_ends]
    best_i = int(np.argmax(candidates)) if len(candidates) else 0
    if len(candidates) and candidates[best_i] > null:
        threshold = float(s_sorted[run_ends[best_i]])
        raw = float(candidates[best_i])
    else:  # detecting nothing is best
        threshold = float(np.nextafter(s_sorted[0], np.inf)) if len(s_sorted) else 1.0
        raw = null
    per_file = {f.name: score_at_threshold([f], profile, threshold) for f in files}
    return ProfileScore(
        profile=profile.name,
        threshold=threshold,
        raw_score=raw,
        normalised=normalise(raw, n_windows, profile) if n_windows else float("nan"),
        n_windows=n_windows,
        per_file=per_file,
    )


def score_corpus(files: Sequence[FileRows], profiles: Mapping[str, CostProfile]) -> CorpusScore:
    """Optimise and normalise every profile, and break the result down by category.

    A category's normalised score uses the corpus-wide threshold and the null and perfect
    scores of the category's own windows; categories without windows
    (``artificialNoAnomaly``) get ``None`` there and their raw (false-positive) score beside it.
    """
    results = {name: optimise_threshold(files, p) for name, p in profiles.items()}
    per_category: dict[str, dict[str, float | None]] = {}
    categories = sorted({f.category for f in files})
    for cat in categories:
        members = [f for f in files if f.category == cat]
        n_w = sum(f.n_windows for f in members)
        row: dict[str, float | None] = {"n_files": float(len(members)), "n_windows": float(n_w)}
        for name, res in results.items():
            raw = sum(res.per_file[f.name] for f in members)
            row[f"{name}_raw"] = raw
            row[name] = normalise(raw, n_w, profiles[name]) if n_w else None
        per_category[cat] = row
    return CorpusScore(profiles=results, per_category=per_category)


def load_profiles(path: str | Path) -> dict[str, CostProfile]:
    """Read NAB's ``config/profiles.json``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(
            f"cannot read NAB profiles from {path}: {exc}; pass the NAB folder that holds "
            "config/profiles.json"
        ) from exc
    profiles = {}
    for name, spec in raw.items():
        m = spec["CostMatrix"]
        profiles[name] = CostProfile(
            name=name,
            tp_weight=float(m["tpWeight"]),
            fp_weight=float(m["fpWeight"]),
            fn_weight=float(m["fnWeight"]),
            tn_weight=float(m.get("tnWeight", 1.0)),
        )
    return profiles


def load_windows(path: str | Path) -> dict[str, list[tuple[np.datetime64, np.datetime64]]]:
    """Read NAB's ``labels/combined_windows.json`` into ``{relative file: [(start, end)]}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(
            f"cannot read NAB windows from {path}: {exc}; pass the NAB folder that holds "
            "labels/combined_windows.json"
        ) from exc
    return {
        name: [(np.datetime64(a, "s"), np.datetime64(b, "s")) for a, b in limits]
        for name, limits in raw.items()
    }


def read_results_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``timestamp`` and ``anomaly_score`` from a NAB results (or data) CSV."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        try:
            t_col, s_col = header.index("timestamp"), header.index("anomaly_score")
        except ValueError as exc:
            raise InvalidInputError(
                f"{path} has columns {header}; a NAB results file needs 'timestamp' and "
                "'anomaly_score'"
            ) from exc
        rows = [(r[t_col], r[s_col]) for r in reader if r]
    timestamps = np.array([t for t, _ in rows], dtype="datetime64[s]")
    scores = np.array([float(s) for _, s in rows], dtype=float)
    return timestamps, scores
