"""Run detectors over SKAB's multivariate test-rig runs and judge them on the labelled rows.

The data are the "other" experiments of the Skoltech Anomaly Benchmark (Katser and Kozitsin,
2020; GPL v3, read from ../shared/datasets/skab-other, never copied into this repository): 14
runs of a water-circulation rig, one row per second with 8 sensors (accelerometers, current,
pressure, temperature, thermocouple, voltage, volume flow) and an ``anomaly`` label. The
protocol (the data's README): each run is one multivariate stream, all 8 sensors in one
event, fed in order to a fresh detector, each row scored before it is learnt; the first
:data:`TRAIN_ROWS` rows of a run are anomaly-free training and are not judged (run 2's
labelled anomaly begins at row 104: there only the 104 rows before it are training, so no
labelled row goes unjudged). Two numbers per
detector, over the judged rows of all runs pooled:

* ROC AUC (:func:`streamvgan.eval.msl.roc_auc`, exact and rank-based);
* F1 at the best single threshold (:func:`best_f1`).

Runs are spread over worker processes like NAB's files (:func:`streamvgan.eval.nab.run_tasks`).
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

from streamvgan.errors import ConfigurationError, InvalidInputError
from streamvgan.eval.msl import roc_auc
from streamvgan.eval.nab import run_tasks
from streamvgan.eval.scoring import csv_files, detector_from_table, finite_scores, score_series

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DETECTORS",
    "SKAB_DETECTORS",
    "TRAIN_ROWS",
    "DetectorResult",
    "Run",
    "RunResult",
    "best_f1",
    "flag_all_f1",
    "format_table",
    "make_skab_detector",
    "read_run",
    "run_skab",
    "write_results",
]

#: Rows at the start of every run that are anomaly-free training (SKAB's protocol).
TRAIN_ROWS = 400
#: The 8 sensor columns of a SKAB run, in file order.
SENSORS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)

#: ``name -> (detector of the NAB factory, fixed keyword arguments)``. The streamvgan rows use
#: the detector's defaults with NAB's alert cooldown off (a NAB setting). ``channels`` (the
#: default field mode) models each sensor as its own univariate channel and scores the event
#: by its most surprising sensor; ``joint`` models the 8 sensors together in one network, so
#: relations between them (a valve closing shows in flow, pressure and current at once) can
#: show in the model signal. The shipped pretrained network reads one value per step, so the
#: joint row starts from random weights (``init="random"``); the channels row starts from the
#: pretrained network, the default. The ``_hold`` rows are the same with
#: ``anomalous_calibration_weight=0.1``: points scoring as anomalous move the calibration ten
#: times slower, so a fault that lasts (SKAB's last hundreds of rows) keeps scoring high. The
#: ``_reference`` rows hold as well and, after each sensor's first :data:`TRAIN_ROWS` events
#: (``reference_events``), stop their calibration and level reference there, as SKAB's own
#: protocol fits once on the training rows (in run 2, whose anomaly begins at row 104, the
#: same 400 rows: one parameter set for every run).
_JOINT = {"field_mode": "joint", "n_features": len(SENSORS), "init": "random"}
_HOLD = {"anomalous_calibration_weight": 0.1}
_REFERENCE = {**_HOLD, "reference_events": TRAIN_ROWS}
SKAB_DETECTORS: dict[str, tuple[str, dict[str, Any]]] = {
    "streamvgan": ("streamvgan", {"alert_cooldown": 0}),
    "streamvgan_joint": ("streamvgan", {"alert_cooldown": 0, **_JOINT}),
    "streamvgan_hold": ("streamvgan", {"alert_cooldown": 0, **_HOLD}),
    "streamvgan_joint_hold": ("streamvgan", {"alert_cooldown": 0, **_JOINT, **_HOLD}),
    "streamvgan_reference": ("streamvgan", {"alert_cooldown": 0, **_REFERENCE}),
    "streamvgan_joint_reference": ("streamvgan", {"alert_cooldown": 0, **_JOINT, **_REFERENCE}),
    "hst": ("hst", {}),
}
DEFAULT_DETECTORS = tuple(SKAB_DETECTORS)


def make_skab_detector(name: str, seed: int = 0, params: dict[str, Any] | None = None) -> Any:
    """A fresh detector by name: one of :data:`SKAB_DETECTORS` or of the NAB detectors
    (:data:`streamvgan.eval.baselines.DETECTORS`); ``params`` override its defaults.

    >>> make_skab_detector("streamvgan_joint").params["field_mode"]
    'joint'
    """
    return detector_from_table(SKAB_DETECTORS, name, seed, params)


# --- metrics -------------------------------------------------------------------------------


def best_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The highest F1 over every single threshold ``score >= t`` (each distinct score tried),
    and that threshold. ``(nan, nan)`` without a positive row.

    >>> best_f1(np.array([0.1, 0.2, 0.9, 0.8, 0.3]), np.array([0, 0, 1, 1, 0]))
    (1.0, 0.8)
    >>> f1, t = best_f1(np.array([0.5, 0.5, 0.9]), np.array([1, 0, 1]))
    >>> round(f1, 4), t
    (0.8, 0.5)
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise InvalidInputError(
            f"scores {scores.shape} and labels {labels.shape} must be 1-D of the same length"
        )
    n_pos = int(labels.sum())
    if n_pos == 0:
        return math.nan, math.nan
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    flagged = np.arange(1, len(s) + 1)
    # A threshold flags every row scoring at or above it: only the last row of each run of
    # equal scores is a reachable cut.
    last = np.r_[s[1:] != s[:-1], True]
    tp, flagged, cut = tp[last], flagged[last], s[last]
    f1 = 2.0 * tp / (flagged + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(cut[best])


def flag_all_f1(labels: np.ndarray) -> float:
    """F1 of flagging every row: ``2 p / (1 + p)`` for a labelled share ``p``.

    >>> round(flag_all_f1(np.array([1, 1, 0, 0])), 4)
    0.6667
    """
    p = float(np.mean(np.asarray(labels) != 0))
    return 2.0 * p / (1.0 + p)


# --- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run of the rig: its rows (n, 8) in order and their labels."""

    name: str
    values: np.ndarray = field(repr=False)  # (n, len(SENSORS))
    labels: np.ndarray = field(repr=False)  # (n,) 0/1

    @property
    def n_train(self) -> int:
        """The training rows, not judged: the first :data:`TRAIN_ROWS`, or fewer where the
        labelled anomaly begins earlier (run 2 of the released data, at row 104)."""
        labelled = np.flatnonzero(self.labels)
        return min(TRAIN_ROWS, int(labelled[0])) if len(labelled) else TRAIN_ROWS

    def events(self) -> list[dict[str, float]]:
        return [dict(zip(SENSORS, row)) for row in self.values.tolist()]


def read_run(path: Path) -> Run:
    """Read one ``;``-separated SKAB CSV, checking its columns, that every sensor value is a
    finite number and that labels are 0 or 1."""
    values: list[list[float]] = []
    labels: list[int] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter=";")
        need = {*SENSORS, "anomaly"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise InvalidInputError(
                f"{path}: columns {reader.fieldnames}, expected the 8 SKAB sensors and "
                "'anomaly'; --data must be the SKAB folder (../shared/datasets/skab-other)"
            )
        for line, row in enumerate(reader, start=2):
            try:
                xs = [float(row[s]) for s in SENSORS]
                label = float(row["anomaly"])
            except (TypeError, ValueError):
                xs, label = [math.nan], math.nan
            if not all(map(math.isfinite, xs)) or label not in (0.0, 1.0):
                raise InvalidInputError(
                    f"{path} line {line}: {dict((k, row.get(k)) for k in (*SENSORS, 'anomaly'))}"
                    "; expected 8 finite sensor values and an anomaly label 0 or 1"
                )
            values.append(xs)
            labels.append(int(label))
    if len(values) <= TRAIN_ROWS:
        raise InvalidInputError(
            f"{path} has {len(values)} rows, no more than the {TRAIN_ROWS} training rows: "
            "nothing to judge"
        )
    run = Run(path.stem, np.array(values), np.array(labels, dtype=np.int8))
    if run.n_train < TRAIN_ROWS:
        log.info(
            "run %s: its anomaly begins at row %d, so only the %d rows before it are training",
            run.name,
            run.n_train,
            run.n_train,
        )
    return run


def run_files(data: Path, runs: list[str] | None = None) -> list[Path]:
    """The labelled run CSVs under ``data`` (all, or those named in ``runs``), in numeric
    order; ``anomaly-free.csv`` is not a judged run."""
    folder = "the SKAB folder (../shared/datasets/skab-other)"
    return csv_files(data, runs, kind="run", folder=folder, numbered=True)


# --- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTask:
    detector: str
    params: dict[str, Any]
    seed: int
    path: Path


@dataclass
class RunResult:
    """One detector over one run: its judged rows' scores and labels."""

    detector: str
    run: str
    seconds: float
    n_non_finite: int
    scores: np.ndarray = field(repr=False)  # the judged rows' scores
    labels: np.ndarray = field(repr=False)

    @property
    def auc(self) -> float:
        return roc_auc(self.scores, self.labels)


def run_one(task: RunTask) -> RunResult:
    """A fresh detector over one run, strictly online; the rows after the training part
    judged."""
    run = read_run(task.path)
    detector = make_skab_detector(task.detector, seed=task.seed, params=task.params)
    scores, seconds = score_series(detector, run.events())
    judged, n_bad = finite_scores(scores[run.n_train :], f"{task.detector} on run {run.name}")
    return RunResult(task.detector, run.name, seconds, n_bad, judged, run.labels[run.n_train :])


@dataclass
class DetectorResult:
    """One detector over the selected runs, judged on their pooled rows."""

    detector: str
    params: dict[str, Any]
    runs: list[RunResult]

    @property
    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([r.scores for r in self.runs]),
            np.concatenate([r.labels for r in self.runs]),
        )

    @property
    def auc(self) -> float:
        return roc_auc(*self.pooled)

    @property
    def f1(self) -> tuple[float, float]:
        return best_f1(*self.pooled)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)


def run_skab(
    data: str | Path,
    detectors: list[str] | tuple[str, ...] = DEFAULT_DETECTORS,
    runs: list[str] | None = None,
    jobs: int = 2,
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
) -> list[DetectorResult]:
    """Run each detector over each selected run (a fresh one per run) and judge it.

    ``params`` maps a detector name to keyword arguments (one set for every run).
    """
    if jobs < 1:
        raise ConfigurationError(f"jobs={jobs}; use 1 or more worker processes")
    paths = run_files(Path(data), runs)
    det_params = {d: dict((params or {}).get(d, {})) for d in detectors}
    for det in detectors:
        make_skab_detector(det, seed=seed, params=det_params[det])  # fail fast on bad names
    tasks = [RunTask(d, det_params[d], seed, p) for p in paths for d in detectors]
    tasks.sort(key=lambda t: t.path.stat().st_size, reverse=True)
    t0 = time.perf_counter()
    done = run_tasks(
        run_one, tasks, jobs, "SKAB runs", "run", lambda r: f"{r.detector} {r.run}: AUC {r.auc:.3f}"
    )
    log.info(
        "%d runs x %d detectors in %.1fs wall", len(paths), len(detectors), time.perf_counter() - t0
    )
    results = []
    for det in detectors:
        mine = sorted((r for r in done if r.detector == det), key=lambda r: int(r.run))
        results.append(DetectorResult(det, det_params[det], mine))
    return results


# --- reports -------------------------------------------------------------------------------


def _f(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"


def format_table(results: list[DetectorResult]) -> str:
    """Markdown: one row per detector (pooled ROC AUC, best F1), then the AUC per run."""
    lines = [
        "| Detector | pooled ROC AUC | best-threshold F1 | runs | s in its runs |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.detector} | {_f(r.auc)} | {_f(r.f1[0])} | {len(r.runs)} | {r.seconds:.0f} |"
        )
    if not results:
        return "\n".join(lines)
    labels = results[0].pooled[1]
    share = float(labels.mean())
    lines += [
        "",
        f"{share:.0%} of the judged rows are labelled: flagging every one of them scores "
        f"F1 {flag_all_f1(labels):.3f}, the floor a detector's best-threshold F1 is to be read "
        "against (the best threshold can always flag everything).",
        "",
        "ROC AUC per run:",
        "",
        "| Run | " + " | ".join(r.detector for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    by_det = [{x.run: x for x in r.runs} for r in results]
    for name in sorted({x.run for r in results for x in r.runs}, key=int):
        cells = [_f(d[name].auc) if name in d else "" for d in by_det]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(results: list[DetectorResult]) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return None if not math.isfinite(v) else round(v, 6)

    return {
        r.detector: {
            "params": r.params,
            "pooled_roc_auc": num(r.auc),
            "best_f1": num(r.f1[0]),
            "best_f1_threshold": num(r.f1[1]),
            "flag_all_f1": num(flag_all_f1(r.pooled[1])),
            "seconds_in_runs": round(r.seconds, 2),
            "runs": [
                {
                    "run": x.run,
                    "n_judged": len(x.labels),
                    "n_anomalous": int(x.labels.sum()),
                    "roc_auc": num(x.auc),
                    "seconds": round(x.seconds, 3),
                    "n_non_finite_scores": x.n_non_finite,
                }
                for x in r.runs
            ],
        }
        for r in results
    }


def write_results(results: list[DetectorResult], out: Path) -> str:
    """Write ``skab.md`` and ``skab.json`` under ``out``; return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(results)
    (out / "skab.md").write_text(table + "\n")
    (out / "skab.json").write_text(json.dumps(to_json(results), indent=2))
    return table
