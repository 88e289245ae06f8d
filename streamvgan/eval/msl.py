"""Run detectors over NASA's MSL spacecraft telemetry and judge them on its labelled sequences.

The data are the MSL half of the SMAP/MSL set released with Hundman et al., "Detecting
Spacecraft Anomalies Using LSTMs and Nonparametric Dynamic Thresholding" (KDD 2018): 27
channels, one CSV each (``part,value,label``), an anomaly-free ``train`` part followed by a
``test`` part whose anomaly sequences are labelled. The protocol (the data's README): each
channel is one stream, fed in order (train, then test), each value scored before it is learnt,
by a fresh detector per channel; only test rows are judged. Two numbers per detector:

* the mean over channels of the ROC AUC of the test rows' scores against their labels, exact
  and rank-based (:func:`roc_auc`, ties count one half);
* the share of labelled sequences caught at a 0.1% false-alarm rate: a sequence is caught when
  its highest score is above the 99.9th percentile of the channel's scores on normal test rows
  (:func:`caught`). Strictly above: a detector whose normal rows reach its largest score
  (e.g. a score of exactly 1.0) catches nothing with that score.

Channels are spread over worker processes like NAB's files (:func:`streamvgan.eval.nab.run_tasks`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from river import base

from streamvgan.errors import ConfigurationError, InvalidInputError
from streamvgan.eval.baselines import RollingZScore
from streamvgan.eval.nab import run_tasks
from streamvgan.eval.scoring import csv_files, detector_from_table, finite_scores, score_series

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DETECTORS",
    "MSL_DETECTORS",
    "Channel",
    "ChannelResult",
    "DetectorResult",
    "DifferencedZScore",
    "caught",
    "format_table",
    "make_msl_detector",
    "read_channel",
    "roc_auc",
    "run_msl",
    "sequences",
    "to_json",
]

#: The false-alarm rate at which sequences are counted as caught.
FALSE_ALARM_RATE = 0.001

#: Detectors this benchmark adds to those of :data:`streamvgan.eval.baselines.DETECTORS`:
#: ``name -> (detector of the NAB factory, fixed keyword arguments)``. The streamvgan rows use
#: the detector's defaults: NAB's alert cooldown is a NAB setting (NAB counts only the first
#: detection in a window), so it is switched off. ``signals`` picks the calibrated signals the
#: score is the maximum of (the new-extreme rule applies in every row). The jump and level
#: signals do not depend on the network, so that row never fits it (``warmup_events`` 10^9):
#: the same scores without the cost. ``streamvgan_hold`` is the default with
#: ``anomalous_calibration_weight=0.1`` (a calibration that follows anomalous points ten times
#: slower, so a fault that lasts keeps scoring high).
MSL_DETECTORS: dict[str, tuple[str, dict[str, Any]]] = {
    "streamvgan": ("streamvgan", {"alert_cooldown": 0}),
    "streamvgan_hold": ("streamvgan", {"alert_cooldown": 0, "anomalous_calibration_weight": 0.1}),
    "streamvgan_model": ("streamvgan", {"alert_cooldown": 0, "signals": ["model"]}),
    "streamvgan_jump_level": (
        "streamvgan",
        {"alert_cooldown": 0, "signals": ["jump", "level"], "warmup_events": 10**9},
    ),
    "hst": ("hst", {}),
    "zscore_diff": ("zscore_diff", {}),
}
DEFAULT_DETECTORS = tuple(MSL_DETECTORS)


class DifferencedZScore(base.AnomalyDetector):
    """:class:`~streamvgan.eval.baselines.RollingZScore` of the first differences
    ``x_t - x_{t-1}``: how unusual a step is, in standard deviations of the recent steps.

    The first value scores 0 (it has no step).

    >>> det = DifferencedZScore(window_size=50)
    >>> for i in range(100):
    ...     x = {"value": float(i)}  # a steady ramp: every step is 1
    ...     _ = det.score_one(x)
    ...     det.learn_one(x)
    >>> det.score_one({"value": 100.0}), round(det.score_one({"value": 103.0}), 3)
    (0.0, 1.0)
    """

    def __init__(self, window_size: int = 500, min_samples: int = 10, on: str | None = None):
        self.window_size = window_size
        self.min_samples = min_samples
        self.on = on
        self._steps = RollingZScore(window_size=window_size, min_samples=min_samples)
        self._last: float | None = None

    @classmethod
    def _unit_test_params(cls):
        yield {"window_size": 10, "min_samples": 2}

    def _value(self, x: dict) -> float:
        if self.on is not None:
            return float(x[self.on])
        if len(x) != 1:
            raise InvalidInputError(
                f"DifferencedZScore got features {sorted(x)}; it is univariate: pass one "
                "feature or set on='<feature name>'"
            )
        return float(next(iter(x.values())))

    def learn_one(self, x: dict) -> None:
        v = self._value(x)
        if self._last is not None:
            self._steps.learn_one({"step": v - self._last})
        self._last = v

    def score_one(self, x: dict) -> float:
        if self._last is None:
            return 0.0
        return self._steps.score_one({"step": self._value(x) - self._last})


def make_msl_detector(name: str, seed: int = 0, params: dict[str, Any] | None = None) -> Any:
    """A fresh detector by name: one of :data:`MSL_DETECTORS` or of the NAB detectors
    (:data:`streamvgan.eval.baselines.DETECTORS`); ``params`` override its defaults.

    >>> make_msl_detector("streamvgan_model").params["signals"]
    ['model']
    """
    return detector_from_table(
        MSL_DETECTORS, name, seed, params, local={"zscore_diff": DifferencedZScore}
    )


# --- metrics -------------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The area under the ROC curve: the probability that a random positive row scores above
    a random negative one, ties counting one half (Mann-Whitney U over midranks). NaN when
    ``labels`` hold only one class.

    >>> roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 0, 1, 1]))
    1.0
    >>> roc_auc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 0]))
    0.5
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise InvalidInputError(
            f"scores {scores.shape} and labels {labels.shape} must be 1-D of the same length"
        )
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    midranks = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank of each distinct score
    rank_sum = float(midranks[inverse][labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def sequences(labels: np.ndarray) -> list[tuple[int, int]]:
    """The runs of 1 in ``labels``, as ``(start, end)`` with ``end`` exclusive.

    >>> sequences(np.array([0, 1, 1, 0, 0, 1]))
    [(1, 3), (5, 6)]
    """
    padded = np.concatenate([[0], np.asarray(labels, dtype=np.int8) != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2])]


def false_alarm_threshold(scores: np.ndarray, labels: np.ndarray, rate: float) -> float:
    """The ``1 - rate`` quantile of the scores on normal rows (linear interpolation)."""
    normal = np.asarray(scores, dtype=np.float64)[np.asarray(labels) == 0]
    if len(normal) == 0:
        raise InvalidInputError("no normal row to set a false-alarm threshold on")
    return float(np.quantile(normal, 1.0 - rate))


def caught(
    scores: np.ndarray, labels: np.ndarray, rate: float = FALSE_ALARM_RATE
) -> tuple[list[bool], float]:
    """For each labelled sequence, whether its highest score is above the false-alarm
    threshold (the ``1 - rate`` quantile of the normal rows' scores); and that threshold.

    >>> scores = np.array([0.1] * 8 + [0.9, 0.1, 0.95, 0.1])
    >>> labels = np.array([0] * 8 + [1, 0, 1, 0])
    >>> caught(scores, labels)
    ([True, True], 0.1)
    """
    threshold = false_alarm_threshold(scores, labels, rate)
    hits = [bool(np.max(scores[s:e]) > threshold) for s, e in sequences(labels)]
    return hits, threshold


# --- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    """One channel: every value in order (train part first) and the test part's labels."""

    name: str
    values: np.ndarray = field(repr=False)
    n_train: int
    labels: np.ndarray = field(repr=False)  # (n_test,) 0/1, the test rows only

    @property
    def n_test(self) -> int:
        return len(self.labels)


def read_channel(path: Path) -> Channel:
    """Read one ``part,value,label`` CSV, checking that the train rows come first, that every
    value is a finite number and that only test rows carry labels."""
    values: list[float] = []
    labels: list[int] = []
    n_train = 0
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"part", "value", "label"} <= set(reader.fieldnames):
            raise InvalidInputError(
                f"{path}: columns {reader.fieldnames}, expected part,value,label; "
                "--data must hold the MSL CSVs of ../shared/datasets/msl"
            )
        for line, row in enumerate(reader, start=2):
            part, value, label = row["part"], row["value"], row["label"]
            try:
                x = float(value)
            except ValueError:
                x = math.nan
            if not math.isfinite(x) or label not in ("0", "1") or part not in ("train", "test"):
                raise InvalidInputError(
                    f"{path} line {line}: part={part!r} value={value!r} label={label!r}; "
                    "expected part train or test, a finite value and a label 0 or 1"
                )
            if part == "train":
                if labels:
                    raise InvalidInputError(
                        f"{path} line {line}: a train row after the test rows began; the "
                        "protocol feeds train then test, so the file must list them in that order"
                    )
                if label == "1":
                    raise InvalidInputError(
                        f"{path} line {line}: a labelled train row; only test rows carry labels"
                    )
                n_train += 1
            else:
                labels.append(int(label))
            values.append(x)
    if not labels:
        raise InvalidInputError(f"{path} has no test rows: nothing to judge")
    return Channel(path.stem, np.array(values), n_train, np.array(labels, dtype=np.int8))


def channel_files(data: Path, channels: list[str] | None = None) -> list[Path]:
    """The channel CSVs under ``data`` (all, or those named in ``channels``), sorted by name."""
    return csv_files(
        data, channels, kind="channel", folder="the MSL folder (../shared/datasets/msl)"
    )


# --- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelTask:
    detector: str
    params: dict[str, Any]
    seed: int
    path: Path


@dataclass
class ChannelResult:
    """One detector over one channel: its test-row scores and what they earn."""

    detector: str
    channel: str
    n_train: int
    n_test: int
    seconds: float
    n_non_finite: int
    auc: float
    threshold: float
    caught: list[bool]
    scores: np.ndarray = field(repr=False)  # the test rows' scores

    def row(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "roc_auc": None if math.isnan(self.auc) else round(self.auc, 6),
            "threshold": self.threshold,
            "n_sequences": len(self.caught),
            "n_caught": sum(self.caught),
            "caught": self.caught,
            "seconds": round(self.seconds, 3),
            "n_non_finite_scores": self.n_non_finite,
        }


def run_channel(task: ChannelTask) -> ChannelResult:
    """A fresh detector over one channel, strictly online; the test rows judged."""
    ch = read_channel(task.path)
    detector = make_msl_detector(task.detector, seed=task.seed, params=task.params)
    scores, seconds = score_series(detector, ({"value": v} for v in ch.values.tolist()))
    # A non-finite score cannot be ranked; count it as the lowest, and make it visible.
    test, n_bad = finite_scores(scores[ch.n_train :], f"{task.detector} on {ch.name} (test rows)")
    hits, threshold = caught(test, ch.labels)
    return ChannelResult(
        detector=task.detector,
        channel=ch.name,
        n_train=ch.n_train,
        n_test=ch.n_test,
        seconds=seconds,
        n_non_finite=n_bad,
        auc=roc_auc(test, ch.labels),
        threshold=threshold,
        caught=hits,
        scores=test,
    )


@dataclass
class DetectorResult:
    """One detector over the selected channels."""

    detector: str
    params: dict[str, Any]
    channels: list[ChannelResult]

    @property
    def mean_auc(self) -> float:
        aucs = [c.auc for c in self.channels if not math.isnan(c.auc)]
        return float(np.mean(aucs)) if aucs else math.nan

    @property
    def n_sequences(self) -> int:
        return sum(len(c.caught) for c in self.channels)

    @property
    def n_caught(self) -> int:
        return sum(sum(c.caught) for c in self.channels)

    @property
    def share_caught(self) -> float:
        return self.n_caught / self.n_sequences if self.n_sequences else math.nan

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.channels)


def _note(r: ChannelResult) -> str:
    return f"{r.detector} {r.channel}: AUC {r.auc:.3f}, {sum(r.caught)}/{len(r.caught)} caught"


def run_msl(
    data: str | Path,
    detectors: list[str] | tuple[str, ...] = DEFAULT_DETECTORS,
    channels: list[str] | None = None,
    jobs: int = 2,
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
) -> list[DetectorResult]:
    """Run each detector over each selected channel (a fresh one per channel) and judge it.

    ``params`` maps a detector name to keyword arguments (one set for every channel).
    """
    if jobs < 1:
        raise ConfigurationError(f"jobs={jobs}; use 1 or more worker processes")
    paths = channel_files(Path(data), channels)
    det_params = {d: dict((params or {}).get(d, {})) for d in detectors}
    for det in detectors:
        make_msl_detector(det, seed=seed, params=det_params[det])  # fail fast on bad names
    tasks = [ChannelTask(d, det_params[d], seed, p) for p in paths for d in detectors]
    # Longest channels first, so the last tasks to start are short and workers finish together.
    tasks.sort(key=lambda t: t.path.stat().st_size, reverse=True)
    t0 = time.perf_counter()
    done = run_tasks(run_channel, tasks, jobs, "MSL channels", "channel", _note)
    log.info(
        "%d channels x %d detectors in %.1fs wall, %d jobs",
        len(paths),
        len(detectors),
        time.perf_counter() - t0,
        jobs,
    )
    results = []
    for det in detectors:
        mine = sorted((r for r in done if r.detector == det), key=lambda r: r.channel)
        result = DetectorResult(det, det_params[det], mine)
        log.info(
            "%s: mean ROC AUC %.3f, %d/%d sequences caught, %.0f s in its channels",
            det,
            result.mean_auc,
            result.n_caught,
            result.n_sequences,
            result.seconds,
        )
        results.append(result)
    return results


# --- reports -------------------------------------------------------------------------------


def _f(v: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def format_table(results: list[DetectorResult]) -> str:
    """Markdown: one row per detector, then the per-channel AUC and sequences caught."""
    lines = [
        "| Detector | mean ROC AUC | sequences caught at 0.1% false alarms | channels | "
        "s in its channels |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.detector} | {_f(r.mean_auc)} | {_f(r.share_caught, 2)} "
            f"({r.n_caught}/{r.n_sequences}) | {len(r.channels)} | {r.seconds:.0f} |"
        )
    if not results:
        return "\n".join(lines)
    lines += [
        "",
        "Per channel: ROC AUC, sequences caught / labelled.",
        "",
        "| Channel | " + " | ".join(r.detector for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    by_det = [{c.channel: c for c in r.channels} for r in results]
    for name in sorted({c.channel for r in results for c in r.channels}):
        cells = []
        for chans in by_det:
            c = chans.get(name)
            cells.append("" if c is None else f"{_f(c.auc)} {sum(c.caught)}/{len(c.caught)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(results: list[DetectorResult]) -> dict[str, Any]:
    """Per detector: the summary and the per-channel rows (NaN written as null)."""
    return {
        r.detector: {
            "params": r.params,
            "mean_roc_auc": None if math.isnan(r.mean_auc) else round(r.mean_auc, 6),
            "share_caught": None if math.isnan(r.share_caught) else round(r.share_caught, 6),
            "n_caught": r.n_caught,
            "n_sequences": r.n_sequences,
            "false_alarm_rate": FALSE_ALARM_RATE,
            "seconds_in_channels": round(r.seconds, 2),
            "channels": [c.row() for c in r.channels],
        }
        for r in results
    }


def write_results(results: list[DetectorResult], out: Path) -> str:
    """Write ``msl.md``, ``msl.json`` and ``msl_scores.npz`` (the test rows' scores, keyed
    ``detector/channel``, to judge them again without rerunning) under ``out``; return the
    markdown."""
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(results)
    (out / "msl.md").write_text(table + "\n")
    (out / "msl.json").write_text(json.dumps(to_json(results), indent=2))
    scores = {f"{c.detector}/{c.channel}": c.scores for r in results for c in r.channels}
    # numpy's stub types **kwds as if one could be its allow_pickle flag
    np.savez_compressed(out / "msl_scores.npz", **scores)  # type: ignore[arg-type]
    return table
