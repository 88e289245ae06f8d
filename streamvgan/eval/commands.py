"""``streamvgan evaluate nab | msl | skab | forecast | generation | timegan | all``.

Each subcommand sets ``func(args) -> int``; ``streamvgan.cli`` calls :func:`register`.
Tables go to stdout (they are the command's output); progress goes to the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["register"]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _params(value: str) -> dict[str, dict[str, Any]]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"--params {value!r} is not JSON ({exc}); write e.g. "
            '\'{"streamvgan": {"window": 64}}\''
        ) from None
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise argparse.ArgumentTypeError(
            "--params must map a model name to a JSON object of keyword arguments"
        )
    return parsed


def _nab(args: argparse.Namespace) -> int:
    from streamvgan.eval import nab
    from streamvgan.eval.report import expand_params

    detectors = args.detectors
    runs = nab.run_nab(
        data=args.data,
        out=args.out,
        detectors=detectors,
        files=args.files,
        jobs=args.jobs,
        seed=args.seed,
        params=expand_params(detectors, args.params),
    )
    table = nab.format_tables(runs, nab.NABCorpus(Path(args.data)).published())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "nab.md").write_text(table + "\n")
    sys.stdout.write(table + "\n")
    return 0


def _msl(args: argparse.Namespace) -> int:
    from streamvgan.eval import msl
    from streamvgan.eval.report import expand_params

    detectors = args.detectors
    results = msl.run_msl(
        data=args.data,
        detectors=detectors,
        channels=args.channels,
        jobs=args.jobs,
        seed=args.seed,
        params=expand_params(detectors, args.params),
    )
    table = msl.write_results(results, Path(args.out))
    sys.stdout.write(table + "\n")
    return 0


def _skab(args: argparse.Namespace) -> int:
    from streamvgan.eval import skab
    from streamvgan.eval.report import expand_params

    detectors = args.detectors
    results = skab.run_skab(
        data=args.data,
        detectors=detectors,
        runs=args.runs,
        jobs=args.jobs,
        seed=args.seed,
        params=expand_params(detectors, args.params),
    )
    table = skab.write_results(results, Path(args.out))
    sys.stdout.write(table + "\n")
    return 0


def _forecast(args: argparse.Namespace) -> int:
    from streamvgan.eval import forecast
    from streamvgan.eval.report import expand_params

    models = args.models
    report = forecast.run_forecasts(
        models=models,
        series=args.series,
        nab_data=args.nab_data,
        seed=args.seed,
        params=expand_params(models, args.params),
        max_origins=args.max_origins,
        first_points=args.first_points,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = forecast.format_table(report)
    if "snaive" in models:
        table += "\n\n" + forecast.format_summary(report)
    (out / "forecast.md").write_text(table + "\n")
    (out / "forecast.json").write_text(json.dumps(forecast.to_json(report), indent=2))
    sys.stdout.write(table + "\n")
    return 0


def _generation(args: argparse.Namespace) -> int:
    from streamvgan.eval import generation
    from streamvgan.eval.report import expand_params

    generators = args.generators
    report = generation.run_generation(
        generators=generators,
        datasets=args.datasets,
        seed=args.seed,
        params=expand_params(generators, args.params),
        n_origins=args.n_origins,
        steps=args.steps,
        repeats=args.repeats,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = generation.format_table(report)
    (out / "generation.md").write_text(table + "\n")
    (out / "generation.json").write_text(json.dumps(generation.to_json(report), indent=2))
    sys.stdout.write(table + "\n")
    return 0


def _timegan(args: argparse.Namespace) -> int:
    from streamvgan.eval import timegan

    config = timegan.TimeGANConfig(
        n_windows=args.windows,
        train_steps=args.train_steps,
        disc_steps=args.disc_steps,
        disc_runs=args.disc_runs,
        seed=args.seed,
    )
    rows = timegan.run_generators(args.generators, config, args.params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = timegan.format_table(rows)
    (out / "timegan.md").write_text(table + "\n")
    (out / "timegan.json").write_text(json.dumps(timegan.to_json(rows), indent=2))
    sys.stdout.write(table + "\n")
    return 0


def _all(args: argparse.Namespace) -> int:
    from streamvgan.eval import report

    text = report.run_all(
        out=Path(args.out),
        nab_data=Path(args.data) if args.data else None,
        msl_data=Path(args.msl_data) if args.msl_data else None,
        skab_data=Path(args.skab_data) if args.skab_data else None,
        jobs=args.jobs,
        seed=args.seed,
        params=args.params,
        include_streamvgan=not args.baselines_only,
        nab_files=args.files,
    )
    sys.stdout.write(text + "\n")
    return 0


def _common(p: argparse.ArgumentParser, models_flag: str, default: str) -> None:
    p.add_argument("--out", required=True, type=Path, help="folder for results and tables")
    p.add_argument("--seed", type=int, default=0, help="seed of every model. Default: 0")
    p.add_argument(
        models_flag,
        type=_csv,
        default=_csv(default),
        help=f"comma-separated names. Default: {default}",
    )
    p.add_argument(
        "--params",
        type=_params,
        default={},
        help="JSON {name: {kwarg: value}} passed to those models, e.g. "
        '\'{"streamvgan": {"window": 64}}\'',
    )


def register(subparsers: Any) -> None:
    """Add ``evaluate`` and its subcommands to the CLI's subparsers."""
    ev = subparsers.add_parser(
        "evaluate",
        help="run the public benchmarks (NAB, MSL, forecasts, generation)",
        description="Benchmark streamvgan against published numbers and River baselines.",
    )
    sub = ev.add_subparsers(dest="evaluate_command", metavar="BENCHMARK", required=True)

    p = sub.add_parser("nab", help="Numenta Anomaly Benchmark, scored in-process")
    p.add_argument("--data", required=True, help="NAB checkout (data/, labels/, config/)")
    _common(p, "--detectors", "streamvgan,hst,zscore")
    p.add_argument(
        "--files", type=_csv, default=None, help="comma-separated globs over category/file.csv"
    )
    p.add_argument("--jobs", type=int, default=2, help="worker processes. Default: 2")
    p.set_defaults(func=_nab)

    p = sub.add_parser(
        "msl", help="NASA MSL telemetry: per-channel ROC AUC and sequences caught at 0.1%% FA"
    )
    p.add_argument("--data", required=True, help="the MSL folder (../shared/datasets/msl)")
    # the names of streamvgan.eval.msl.DEFAULT_DETECTORS, written out: importing that module
    # here would load River and the engine for every command
    _common(
        p,
        "--detectors",
        "streamvgan,streamvgan_hold,streamvgan_model,streamvgan_jump_level,hst,zscore_diff",
    )
    p.add_argument(
        "--channels", type=_csv, default=None, help="comma-separated channels, e.g. C-1,T-8"
    )
    p.add_argument("--jobs", type=int, default=2, help="worker processes. Default: 2")
    p.set_defaults(func=_msl)

    p = sub.add_parser(
        "skab", help="SKAB multivariate test rig: pooled ROC AUC and best-threshold F1"
    )
    p.add_argument("--data", required=True, help="the SKAB folder (../shared/datasets/skab-other)")
    # the names of streamvgan.eval.skab.DEFAULT_DETECTORS, written out (see msl above)
    _common(
        p,
        "--detectors",
        "streamvgan,streamvgan_joint,streamvgan_hold,streamvgan_joint_hold,"
        "streamvgan_reference,streamvgan_joint_reference,hst",
    )
    p.add_argument("--runs", type=_csv, default=None, help="comma-separated runs, e.g. 1,5,10")
    p.add_argument("--jobs", type=int, default=2, help="worker processes. Default: 2")
    p.set_defaults(func=_skab)

    p = sub.add_parser("forecast", help="prequential 1..H-step forecasts on real series")
    _common(p, "--models", "streamvgan,snarimax,holtwinters,last,snaive")
    p.add_argument(
        "--series",
        type=_csv,
        default=None,
        help="comma-separated series names (default: all; see streamvgan.eval.forecast.SERIES)",
    )
    p.add_argument("--nab-data", default=None, help="NAB checkout, for its anomaly-free series")
    p.add_argument(
        "--max-origins",
        type=int,
        default=400,
        help="forecast origins per series, evenly spaced (models learn every point). Default: 400",
    )
    p.add_argument(
        "--first-points",
        type=int,
        default=None,
        help="cold start: every origin from point 24 on whose targets lie in each series' "
        "first N points (e.g. 300), instead of --max-origins over the whole series",
    )
    p.set_defaults(func=_forecast)

    p = sub.add_parser("generation", help="TimeGAN discriminative and predictive scores")
    _common(p, "--generators", "streamvgan,randomwalk")
    p.add_argument(
        "--datasets", type=_csv, default=["sines", "stocks"], help="Default: sines,stocks"
    )
    p.add_argument(
        "--n-origins", type=int, default=400, help="generated windows per dataset. Default: 400"
    )
    p.add_argument(
        "--steps", type=int, default=1000, help="training steps of the post-hoc GRUs. Default: 1000"
    )
    p.add_argument("--repeats", type=int, default=3, help="post-hoc trainings averaged. Default: 3")
    p.set_defaults(func=_generation)

    p = sub.add_parser(
        "timegan", help="TimeGAN's own protocol: 5-dimensional sines, unconditional samples"
    )
    _common(p, "--generators", "streamvgan,streamvgan_noadv")
    p.add_argument("--windows", type=int, default=10_000, help="sine windows. Default: 10000")
    p.add_argument(
        "--train-steps", type=int, default=3000, help="the network's steps. Default: 3000"
    )
    p.add_argument(
        "--disc-steps", type=int, default=2000, help="discriminator iterations. Default: 2000"
    )
    p.add_argument("--disc-runs", type=int, default=10, help="discriminators averaged. Default: 10")
    p.set_defaults(func=_timegan)

    p = sub.add_parser("all", help="every benchmark and ablation; markdown tables and PNG plots")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", default=None, help="NAB checkout (NAB parts skipped without it)")
    p.add_argument(
        "--msl-data", default=None, help="the MSL folder (the MSL benchmark skipped without it)"
    )
    p.add_argument(
        "--skab-data",
        default=None,
        help="the SKAB folder (the SKAB benchmark skipped without it)",
    )
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", type=_params, default={})
    p.add_argument("--files", type=_csv, default=None, help="NAB globs (default: all 58 files)")
    p.add_argument("--baselines-only", action="store_true", help="skip the streamvgan variants")
    p.set_defaults(func=_all)
