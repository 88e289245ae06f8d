"""``streamvgan pretrain``: make the pretrained weights that new engines start from.

Registered by ``streamvgan.cli``; heavy imports happen inside the command, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["register"]


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from streamvgan.nn.model import ModelConfig
    from streamvgan.pretrain.train import PretrainConfig, pretrain

    torch.set_num_threads(args.threads)
    model = ModelConfig(
        hidden_size=args.hidden_size, latent_size=args.latent_size, forecast_relative=True
    )
    config = PretrainConfig(series=args.series, steps=args.steps, seed=args.seed, model=model)
    from streamvgan.progress import Progress

    bars: dict[str, Progress] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:  # one bar per stage: replaying the corpus, then training
            for bar in bars.values():
                bar.close()
            unit = "series" if stage == "replay" else "step"
            bars[stage] = Progress(total, f"pretrain {stage}", unit=unit)
        bars[stage].set(done)

    try:
        report = pretrain(config, Path(args.out), progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    log.info(
        "wrote %s (sha256 %s): %d windows, replay %.0fs, training %.0fs, losses %s",
        report.path,
        report.sha256,
        report.n_windows,
        report.replay_s,
        report.train_s,
        {k: round(v, 3) for k, v in report.losses.items()},
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain the network on a synthetic corpus generated in code",
        description="Replay a synthetic corpus (Gaussian-process kernel compositions, trends, "
        "ARMA, random walks, level shifts, counts, bursty noise; no file is read) through the "
        "engine and train one network on its windows. Writes PATH and PATH's .json manifest "
        "(SHA-256, model configuration, the recipe). Reproducible from --seed.",
    )
    p.add_argument("--out", required=True, help="weights file to write, e.g. pretrained.pt")
    p.add_argument(
        "--series", type=_positive_int, default=2000, help="corpus series (default 2000)"
    )
    p.add_argument(
        "--steps", type=_positive_int, default=3000, help="optimiser steps (default 3000)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and the training")
    p.add_argument("--hidden-size", type=_positive_int, default=32, help="GRU state size")
    p.add_argument("--latent-size", type=_positive_int, default=4, help="latent size")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch threads (default 1: the same seed and thread count give the same bytes)",
    )
    p.set_defaults(func=_pretrain)
