"""``streamvgan evaluate all``: NAB, forecasts and generation for the full VAE-GAN and its two
ablations (``adversarial=False``, ``variational=False``) beside the baselines, and the MSL
telemetry benchmark, in one run.

Writes ``<out>/nab/`` (NAB results files and scores), ``<out>/nab.md``, ``<out>/msl.md``,
``<out>/msl.json``, ``<out>/skab.md``, ``<out>/skab.json``, ``<out>/forecast.md``,
``<out>/generation.md``, ``<out>/ablations.md``, the JSON behind them, a few PNG plots and
``<out>/README.md`` with everything and the time each part took.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamvgan._optional import require
from streamvgan.eval import forecast, generation, msl, nab, nab_scorer, plots, skab

log = logging.getLogger(__name__)

__all__ = ["VARIANTS", "ablation_table", "expand_params", "run_all"]

#: The full model and its ablations, as named in every benchmark.
VARIANTS = ("streamvgan", "streamvgan_noadv", "streamvgan_novar")
#: NAB files drawn in the report (one per kind of anomaly; both are in the corpus).
PLOTTED_NAB_FILES = (
    "realKnownCause/machine_temperature_system_failure.csv",
    "realKnownCause/nyc_taxi.csv",
)


def expand_params(
    names: list[str], params: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Parameters given for ``streamvgan`` also apply to its ablations (so an ablation differs
    from the full model in exactly one switch); parameters given per name override them.

    >>> names = ["streamvgan", "streamvgan_noadv", "hst"]
    >>> expand_params(names, {"streamvgan": {"hidden_size": 16}})
    {'streamvgan': {'hidden_size': 16}, 'streamvgan_noadv': {'hidden_size': 16}, 'hst': {}}
    """
    params = params or {}
    base = params.get("streamvgan", {})
    return {n: {**(base if n.startswith("streamvgan") else {}), **params.get(n, {})} for n in names}


def _f(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def ablation_table(
    nab_runs: list[nab.DetectorRun] | None,
    fc: forecast.ForecastReport | None,
    gen: generation.GenerationReport | None,
    names: tuple[str, ...] = VARIANTS,
) -> str:
    """One row per variant: NAB scores, mean forecast metrics, generation scores."""
    lines = [
        "| Variant | NAB standard | NAB low FP | NAB low FN | mean MASE | mean 10-90% coverage | "
        "discriminative sines | discriminative stocks | predictive sines | predictive stocks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        cells: list[str] = []
        run = next((r for r in nab_runs or [] if r.detector == name), None)
        s = run.score.normalised() if run else {}
        cells += [_f(s.get(p)) for p in nab_scorer.PROFILE_NAMES]
        rows = [r for r in (fc.rows if fc else []) if r.model == name]
        cells.append(_f(float(np.mean([r.mase for r in rows])), 3) if rows else "n/a")
        cells.append(_f(float(np.mean([r.coverage for r in rows])), 2) if rows else "n/a")
        g = {r.dataset: r for r in (gen.rows if gen else []) if r.generator == name}
        cells += [_f(g[d].discriminative, 3) if d in g else "n/a" for d in ("sines", "stocks")]
        cells += [_f(g[d].predictive, 4) if d in g else "n/a" for d in ("sines", "stocks")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nab_plots(out: Path, runs: list[nab.DetectorRun], corpus: nab.NABCorpus) -> list[Path]:
    windows = nab_scorer.load_windows(corpus.windows_path)
    paths = []
    run_files = sorted({f.name for r in runs for f in r.files})
    wanted = [n for n in PLOTTED_NAB_FILES if n in run_files] or run_files[:1]
    for name in wanted:
        found = {r.detector: next((f for f in r.files if f.name == name), None) for r in runs}
        by_det = {d: f for d, f in found.items() if f is not None}
        if not by_det:
            continue
        _, raw_values = nab.read_data_file(corpus.data_dir / name)
        first = next(iter(by_det.values()))
        thresholds = {
            r.detector: r.score.profiles["standard"].threshold for r in runs if r.detector in by_det
        }
        paths.append(
            plots.plot_nab_file(
                out / f"nab_{Path(name).stem}.png",
                name,
                first.timestamps,
                np.array(raw_values, dtype=float),
                {d: f.scores for d, f in by_det.items()},
                thresholds,
                windows[name],
            )
        )
    return paths


def run_all(
    out: Path,
    nab_data: Path | None,
    jobs: int = 2,
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
    include_streamvgan: bool = True,
    nab_files: list[str] | None = None,
    msl_data: Path | None = None,
    skab_data: Path | None = None,
    forecast_series: list[str] | None = None,
    forecast_origins: int = 400,
    generation_datasets: tuple[str, ...] = ("sines", "stocks"),
    generation_origins: int = 400,
    generation_steps: int = 1000,
) -> str:
    """Run everything, write the tables and plots under ``out``, return the README text."""
    require("matplotlib", extra="eval", purpose="the evaluation's plots")  # before the runs
    out.mkdir(parents=True, exist_ok=True)
    variants = list(VARIANTS) if include_streamvgan else []
    timings: dict[str, float] = {}
    sections: list[str] = ["# streamvgan evaluation", ""]
    images: list[Path] = []

    nab_runs: list[nab.DetectorRun] | None = None
    if nab_data is not None:
        detectors = variants + ["hst", "zscore"]
        t0 = time.perf_counter()
        nab_runs = nab.run_nab(
            nab_data,
            out / "nab",
            detectors,
            nab_files,
            jobs,
            seed,
            expand_params(detectors, params),
        )
        timings["nab"] = time.perf_counter() - t0
        corpus = nab.NABCorpus(Path(nab_data))
        table = nab.format_tables(nab_runs, corpus.published())
        (out / "nab.md").write_text(table + "\n")
        images += _nab_plots(out, nab_runs, corpus)
        per_det = ", ".join(
            f"{r.detector} {sum(f.seconds for f in r.files):.0f} s" for r in nab_runs
        )
        sections += [
            "## NAB",
            "",
            f"All detectors in {timings['nab']:.0f} s wall with {jobs} worker processes; "
            f"time spent inside each detector's files (one core each): {per_det}.",
            "",
            table,
            "",
        ]
    else:
        log.warning("no NAB checkout given (--data): skipping NAB")

    if msl_data is not None:
        names = [d for d in msl.DEFAULT_DETECTORS if include_streamvgan or "streamvgan" not in d]
        t0 = time.perf_counter()
        msl_results = msl.run_msl(msl_data, names, None, jobs, seed, expand_params(names, params))
        timings["msl"] = time.perf_counter() - t0
        table = msl.write_results(msl_results, out)
        sections += [
            "## MSL telemetry",
            "",
            f"All detectors in {timings['msl']:.0f} s wall with {jobs} worker processes.",
            "",
            table,
            "",
        ]
    else:
        log.warning("no MSL folder given (--msl-data): skipping MSL")

    if skab_data is not None:
        names = [d for d in skab.DEFAULT_DETECTORS if include_streamvgan or "streamvgan" not in d]
        t0 = time.perf_counter()
        skab_results = skab.run_skab(
            skab_data, names, None, jobs, seed, expand_params(names, params)
        )
        timings["skab"] = time.perf_counter() - t0
        table = skab.write_results(skab_results, out)
        sections += [
            "## SKAB multivariate test rig",
            "",
            f"All detectors in {timings['skab']:.0f} s wall with {jobs} worker processes.",
            "",
            table,
            "",
        ]
    else:
        log.warning("no SKAB folder given (--skab-data): skipping SKAB")

    models = variants + ["snarimax", "holtwinters", "last", "snaive"]
    t0 = time.perf_counter()
    fc = forecast.run_forecasts(
        models, forecast_series, nab_data, seed, expand_params(models, params), forecast_origins
    )
    timings["forecast"] = time.perf_counter() - t0
    table = forecast.format_table(fc)
    (out / "forecast.md").write_text(table + "\n")
    (out / "forecast.json").write_text(json.dumps(forecast.to_json(fc), indent=2))
    for s, ex in fc.examples.items():
        images.append(plots.plot_forecasts(out / f"forecast_{s}.png", s, ex))
    sections += ["## Forecasts (prequential)", "", table, ""]

    gens = variants + ["randomwalk"]
    t0 = time.perf_counter()
    gen = generation.run_generation(
        gens,
        generation_datasets,
        seed,
        expand_params(gens, params),
        generation_origins,
        steps=generation_steps,
    )
    timings["generation"] = time.perf_counter() - t0
    table = generation.format_table(gen)
    (out / "generation.md").write_text(table + "\n")
    (out / "generation.json").write_text(json.dumps(generation.to_json(gen), indent=2))
    for ds, ex in gen.examples.items():
        images.append(plots.plot_generation(out / f"generation_{ds}.png", ds, ex))
    sections += ["## Generated continuations", "", table, ""]

    if variants:
        table = ablation_table(nab_runs, fc, gen)
        (out / "ablations.md").write_text(table + "\n")
        sections += ["## Ablations", "", table, ""]

    sections += ["## Time", ""]
    sections += [f"- {k}: {v:.0f} s" for k, v in timings.items()]
    sections += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    text = "\n".join(sections) + "\n"
    (out / "README.md").write_text(text)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    return text
