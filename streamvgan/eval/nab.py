"""Run detectors over the Numenta Anomaly Benchmark the way NAB requires, and score them.

NAB's rules (Lavin & Ahmad, ICMLA 2015): one parameter set for every file; each file is
processed strictly online, i.e. each anomaly score uses only the points before and at it
(``score_one`` then ``learn_one`` per point); no state is carried from one file to another
(a fresh detector per file); and detections in the probationary period (the first 15% of a
file) are ignored by the scorer. The outputs follow NAB's results layout,
``<out>/<detector>/<category>/<detector>_<file>.csv`` with the columns
``timestamp,value,anomaly_score,label``, so they can also be scored by NAB itself.

Files are spread over worker processes (largest first); each worker limits its math libraries
to one thread so that ``--jobs N`` uses about N cores.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from streamvgan.errors import ConfigurationError
from streamvgan.eval import nab_scorer
from streamvgan.eval.baselines import make_detector
from streamvgan.progress import Progress

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "DetectorRun",
    "FileRun",
    "NABCorpus",
    "details",
    "format_tables",
    "read_data_file",
    "run_file",
    "run_nab",
    "run_tasks",
]


@dataclass(frozen=True)
class NABCorpus:
    """Where the pieces of a NAB checkout are."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def windows_path(self) -> Path:
        return self.root / "labels" / "combined_windows.json"

    @property
    def profiles_path(self) -> Path:
        return self.root / "config" / "profiles.json"

    @property
    def published_path(self) -> Path:
        return self.root / "results" / "final_results.json"

    def check(self) -> None:
        for p in (self.data_dir, self.windows_path, self.profiles_path):
            if not p.exists():
                raise ConfigurationError(
                    f"{p} does not exist; --data must be a NAB checkout holding data/, "
                    "labels/combined_windows.json and config/profiles.json"
                )

    def files(self, patterns: list[str] | None = None) -> list[str]:
        """Relative names (``category/file.csv``) of the labelled data files, filtered by globs."""
        windows = nab_scorer.load_windows(self.windows_path)
        names = sorted(n for n in windows if (self.data_dir / n).exists())
        if patterns:
            names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
        if not names:
            raise ConfigurationError(
                f"no NAB data file under {self.data_dir} matches {patterns}; use globs such as "
                "'realKnownCause/*' or '*nyc_taxi.csv'"
            )
        return names

    def published(self) -> dict[str, dict[str, float]]:
        if not self.published_path.exists():
            return {}
        return json.loads(self.published_path.read_text())


@dataclass(frozen=True)
class FileTask:
    detector: str
    params: dict[str, Any]
    seed: int
    data_file: Path
    name: str
    out_file: Path
    windows: list[tuple[np.datetime64, np.datetime64]]


@dataclass
class FileRun:
    """What running one detector over one file produced."""

    detector: str
    name: str
    n_rows: int
    seconds: float
    n_non_finite: int
    timestamps: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)


@dataclass
class DetectorRun:
    """One detector over the selected files: its NAB scores and how long it took.

    ``wall_seconds`` is the wall time of the whole call (all detectors share the worker pool);
    each file's own time is in ``files[i].seconds``.
    """

    detector: str
    params: dict[str, Any]
    files: list[FileRun]
    wall_seconds: float
    score: nab_scorer.CorpusScore

    def summary(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "params": self.params,
            "n_files": len(self.files),
            "n_rows": sum(f.n_rows for f in self.files),
            "wall_seconds_all_detectors": round(self.wall_seconds, 2),
            "seconds_in_files": round(sum(f.seconds for f in self.files), 2),
            "n_non_finite_scores": sum(f.n_non_finite for f in self.files),
            "scores": self.score.normalised(),
            "thresholds": {k: p.threshold for k, p in self.score.profiles.items()},
            "raw_scores": {k: p.raw_score for k, p in self.score.profiles.items()},
            "per_category": self.score.per_category,
            "per_file_seconds": {f.name: round(f.seconds, 3) for f in self.files},
        }


def read_data_file(path: Path) -> tuple[list[str], list[str]]:
    """The ``timestamp`` and ``value`` columns of a NAB data file, as the strings written."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [(r["timestamp"], r["value"]) for r in reader]
    return [t for t, _ in rows], [v for _, v in rows]


@dataclass
class OnlineScores:
    """What :func:`score_online` measured: one score per value, the time it took, and how many
    of the judged scores were not finite (written as 0.0)."""

    scores: np.ndarray
    seconds: float
    n_non_finite: int


def score_online(
    detector: Any, values: Iterable[float | str], what: str, judged_from: int = 0
) -> OnlineScores:
    """Run ``detector`` over ``values`` (numbers, or a CSV's strings) strictly online (each
    value scored with ``score_one`` before ``learn_one`` learns it) and write every non-finite
    score as 0.0: NAB needs a finite score on every row, and a ranking counts it as the lowest.
    The non-finite scores from row ``judged_from`` on (the rows a benchmark judges) are counted
    and logged as a warning that names ``what``, so the fault stays visible.

    >>> from streamvgan.eval.baselines import RollingZScore
    >>> out = score_online(RollingZScore(min_samples=2), [1.0, 2.0, 1.0, 5.0], "example")
    >>> out.scores.round(3).tolist(), out.n_non_finite
    ([0.0, 0.0, 0.5, 0.886], 0)
    """
    scores = []
    t0 = time.perf_counter()
    for v in values:
        x = {"value": float(v)}
        scores.append(detector.score_one(x))
        detector.learn_one(x)
    seconds = time.perf_counter() - t0
    out = np.asarray(scores, dtype=np.float64)
    bad = ~np.isfinite(out)
    judged = bad[judged_from:]
    if judged.any():
        log.warning(
            "%s: %d non-finite scores (first at judged row %d) written as 0.0",
            what,
            int(judged.sum()),
            int(np.flatnonzero(judged)[0]),
        )
    out[bad] = 0.0
    return OnlineScores(out, seconds, int(judged.sum()))


def run_file(task: FileTask) -> FileRun:
    """Run a fresh detector over one file, strictly online, and write NAB's results CSV."""
    stamps, raw_values = read_data_file(task.data_file)
    timestamps = np.array(stamps, dtype="datetime64[s]")
    detector = make_detector(task.detector, seed=task.seed, params=task.params)
    run = score_online(detector, raw_values, f"{task.detector} on {task.name}")
    scores, seconds = run.scores, run.seconds
    labels = np.zeros(len(stamps), dtype=int)
    for start, end in task.windows:
        labels[(timestamps >= start) & (timestamps <= end)] = 1
    task.out_file.parent.mkdir(parents=True, exist_ok=True)
    with task.out_file.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for row in zip(stamps, raw_values, scores.tolist(), labels.tolist()):
            w.writerow(row)
    log.debug("%s %s: %d rows in %.1fs", task.detector, task.name, len(stamps), seconds)
    return FileRun(
        detector=task.detector,
        name=task.name,
        n_rows=len(stamps),
        seconds=seconds,
        n_non_finite=run.n_non_finite,
        timestamps=timestamps,
        scores=scores,
    )


def _init_worker(threads: int) -> None:
    # Oversubscribed OpenMP threads spin against each other: two workers with torch's default
    # thread count on two cores ran 25x slower than one thread each. Importing this function
    # into the worker already imported torch (through the streamvgan package), so set its
    # thread count directly as well as the variables read by libraries imported later.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _done_note(r: FileRun) -> str:
    return f"{r.detector} {r.name}: {r.n_rows} rows in {r.seconds:.1f}s"


def run_tasks(
    fn: Callable[[T], R],
    tasks: list[T],
    jobs: int,
    desc: str,
    unit: str,
    note: Callable[[R], str],
) -> list[R]:
    """``fn`` over ``tasks`` in ``jobs`` worker processes (in this process for one job or task),
    with progress; the results in the order they finished. ``fn`` and the tasks must pickle."""
    results: list[R] = []
    with Progress(len(tasks), desc, unit=unit) as progress:
        if jobs == 1 or len(tasks) == 1:
            for t in tasks:
                r = fn(t)
                results.append(r)
                progress.update(1, note=note(r))
        else:
            # One pool for every detector and file. spawn, not fork: a forked copy of a parent
            # that has used torch's thread pool can deadlock.
            with ProcessPoolExecutor(
                max_workers=min(jobs, len(tasks)),
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(1,),
            ) as pool:
                futures = [pool.submit(fn, t) for t in tasks]
                for fut in as_completed(futures):
                    r = fut.result()
                    results.append(r)
                    progress.update(1, note=note(r))
    return results


def run_nab(
    data: str | Path,
    out: str | Path,
    detectors: list[str],
    files: list[str] | None = None,
    jobs: int = 2,
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
) -> list[DetectorRun]:
    """Run each detector over the selected NAB files, write results and scores, and return them.

    ``params`` maps a detector name to keyword arguments for it (one set for every file).
    Writes ``<out>/<detector>/<category>/<detector>_<file>.csv``,
    ``<out>/<detector>/scores.json`` (``{"standard": .., "reward_low_FP_rate": ..,
    "reward_low_FN_rate": ..}``), ``<out>/<detector>/details.json`` (thresholds, raw scores,
    per-category scores, timings) and ``<out>/scores.json`` (``{detector: {profile: score}}``).
    """
    corpus = NABCorpus(Path(data))
    corpus.check()
    out = Path(out)
    if jobs < 1:
        raise ConfigurationError(f"jobs={jobs}; use 1 or more worker processes")
    windows = nab_scorer.load_windows(corpus.windows_path)
    profiles = nab_scorer.load_profiles(corpus.profiles_path)
    names = corpus.files(files)
    # Largest files first, so the last tasks to start are short and workers finish together.
    det_params = {d: dict((params or {}).get(d, {})) for d in detectors}
    for det in detectors:
        make_detector(det, seed=seed, params=det_params[det])  # fail fast on a bad name/params
    tasks = []
    for name in names:
        category, fname = name.split("/", 1)
        for det in detectors:
            tasks.append(
                FileTask(
                    detector=det,
                    params=det_params[det],
                    seed=seed,
                    data_file=corpus.data_dir / name,
                    name=name,
                    out_file=out / det / category / f"{det}_{fname}",
                    windows=windows[name],
                )
            )
    # Largest files first, so the last tasks to start are short and workers finish together.
    tasks.sort(key=lambda t: t.data_file.stat().st_size, reverse=True)
    t0 = time.perf_counter()
    results = run_tasks(run_file, tasks, jobs, "NAB files", "file", _done_note)
    wall = time.perf_counter() - t0
    log.info(
        "%d files x %d detectors in %.1fs wall, %d jobs", len(names), len(detectors), wall, jobs
    )
    runs = []
    for det in detectors:
        mine = sorted((r for r in results if r.detector == det), key=lambda r: r.name)
        prepared = [
            nab_scorer.prepare_file(r.name, r.timestamps, r.scores, windows[r.name]) for r in mine
        ]
        score = nab_scorer.score_corpus(prepared, profiles)
        run = DetectorRun(det, det_params[det], mine, wall, score)
        summary = run.summary()
        (out / det).mkdir(parents=True, exist_ok=True)
        (out / det / "scores.json").write_text(json.dumps(_json_safe(summary["scores"]), indent=2))
        (out / det / "details.json").write_text(json.dumps(_json_safe(summary), indent=2))
        log.info(
            "%s: %d files, %d rows, %.1fs in its files; standard %.2f",
            det,
            len(mine),
            summary["n_rows"],
            summary["seconds_in_files"],
            score.profiles["standard"].normalised,
        )
        runs.append(run)
    all_scores = {}
    scores_path = out / "scores.json"
    if scores_path.exists():  # keep detectors scored by an earlier call into the same folder
        try:
            all_scores = json.loads(scores_path.read_text())
        except json.JSONDecodeError:
            all_scores = {}
    all_scores.update({r.detector: _json_safe(r.score.normalised()) for r in runs})
    scores_path.write_text(json.dumps(all_scores, indent=2))
    return runs


def _json_safe(obj: Any) -> Any:
    """NaN (an undefined normalised score, e.g. for files without windows) becomes null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"


def format_tables(runs: list[DetectorRun], published: dict[str, dict[str, float]]) -> str:
    """Markdown: this run beside the published scoreboard, then the per-category breakdown."""
    profs = nab_scorer.PROFILE_NAMES
    lines = [
        "| Detector | Standard | Reward low FP | Reward low FN | Source |",
        "|---|---|---|---|---|",
    ]
    rows = [
        (
            r.detector,
            r.score.normalised(),
            f"this run, {len(r.files)} files, {sum(f.seconds for f in r.files):.0f} s of one core",
        )
        for r in runs
    ]
    rows += [(name, s, "published") for name, s in published.items()]
    rows.append(("perfect", dict.fromkeys(profs, 100.0), "definition"))
    rows.sort(key=lambda r: -(r[1].get("standard") or -math.inf))
    for name, s, src in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(s.get(p)) for p in profs) + f" | {src} |")
    for r in runs:
        lines += [
            "",
            f"Per category, {r.detector} (corpus threshold; normalised within the category; "
            "raw score where a category has no windows):",
            "",
            "| Category | Files | Windows | Standard | Reward low FP | Reward low FN |",
            "|---|---|---|---|---|---|",
        ]
        for cat, row in r.score.per_category.items():
            cells = []
            for p in profs:
                v = row.get(p)
                cells.append(_fmt(v) if v is not None else f"raw {_fmt(row[p + '_raw'])}")
            lines.append(
                f"| {cat} | {int(row['n_files'] or 0)} | {int(row['n_windows'] or 0)} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def details(run: DetectorRun) -> dict[str, Any]:
    """The JSON-ready summary of a run (as written to ``details.json``)."""
    return _json_safe(run.summary())
