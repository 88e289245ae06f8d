"""Pretraining: fit one network on windows of the synthetic corpus, as a stream would show them.

Each corpus series is replayed through a :class:`~streamvgan.engine.StreamEngine` as one stream,
so its windows are normalised exactly as the engine's online normaliser normalises a live
stream (running level and winsorised scale, re-levelling after a shift) and weighted as the
engine weights them for learning. Those windows train the network with the same
:class:`~streamvgan.engine.training.Trainer` the online fine-tuner uses. The result is a small
weights file (:mod:`streamvgan.nn.pretrained`) with its model configuration, the recipe that
made it and a SHA-256, so a shipped file can be checked and reproduced
(``streamvgan pretrain --out PATH --seed K``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.engine.training import Trainer, TrainingWindows
from streamvgan.errors import ConfigurationError
from streamvgan.nn.model import ModelConfig, RecurrentVAEGAN
from streamvgan.nn.pretrained import save_pretrained
from streamvgan.pretrain.corpus import CorpusConfig, SyntheticCorpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """How the shipped weights are made; stored in the weights file."""

    series: int = 2000  # corpus series replayed through the engine
    steps: int = 3000  # optimiser steps
    seed: int = 0
    batch_size: int = 128  # windows per optimiser step
    windows_per_series: int = 24  # windows drawn from each replayed series
    learning_rate: float = 2e-3
    critic_learning_rate: float = 1e-3
    chunk: int = 500  # series replayed through the engine at once (streams of one engine)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(forecast_relative=True))
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    def __post_init__(self) -> None:
        for name in ("series", "steps", "batch_size", "windows_per_series", "chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"pretraining {name} must be a positive int, got {value!r}"
                )


@dataclass(frozen=True)
class PretrainReport:
    path: Path
    sha256: str
    n_windows: int
    replay_s: float
    train_s: float
    losses: dict[str, float]


def corpus_windows(
    config: PretrainConfig,
    engine_config: EngineConfig,
    progress: Callable[[int, int], None] | None = None,
) -> TrainingWindows:
    """Replay ``config.series`` corpus series through engines and draw windows from each."""
    corpus = SyntheticCorpus(config.corpus, seed=config.seed)
    rng = np.random.default_rng(config.seed + 1)
    length = engine_config.window
    xs, ws = [], []
    done = 0
    while done < config.series:
        batch = corpus.take(min(config.chunk, config.series - done))
        # replay buffers hold a whole series, so windows come from anywhere in it
        cfg = replace(
            engine_config,
            replay_size=config.corpus.max_length,
            max_streams=len(batch),
            season_window=0,
        )
        engine = StreamEngine(cfg, seed=config.seed + done)
        longest = max(len(s.values) for s in batch)
        for t in range(longest):
            events = [
                Event(f"s{i}", {"value": float(s.values[t])})
                for i, s in enumerate(batch)
                if t < len(s.values)
            ]
            engine.process(events)
        for i, s in enumerate(batch):
            n = len(s.values)
            if n < length:
                continue
            slot = engine.state.streams[f"s{i}"]["value"]
            ends = rng.integers(length, n + 1, size=config.windows_per_series)
            x, w = engine.state.windows(np.full(len(ends), slot), ends, length)
            xs.append(x.copy())
            ws.append(w.astype(np.float32))
        done += len(batch)
        if progress is not None:
            progress(done, config.series)
    return TrainingWindows(np.concatenate(xs), np.concatenate(ws))


#: the held-out corpus is drawn from this seed offset, far from any training seed
HOLDOUT_SEED_OFFSET = 1_000_003


@torch.no_grad()
def holdout_forecast_ratio(
    model: RecurrentVAEGAN, windows: TrainingWindows, burn_in: int
) -> list[float]:
    """Per step ahead, the network's forecast MSE over the persistence forecast's (the last
    value) on ``windows``, from every origin after the burn-in: below 1, the network adds to
    persistence. Judged on synthetic series the network never trained on, so choosing
    settings by it leaks nothing of the evaluation data."""
    model.eval()
    x = torch.from_numpy(windows.x)
    horizon = model.config.horizon
    hs, _ = model.rnn(x)
    n = x.shape[1] - burn_in - horizon
    origins = slice(burn_in - 1, burn_in - 1 + n)
    mean, _ = model.forecast(hs[:, origins], x[:, origins])  # (B, n, H, F)
    targets = x[:, burn_in:].unfold(1, horizon, 1)[:, :n].permute(0, 1, 3, 2)
    last = x[:, origins].unsqueeze(2)
    net = ((targets - mean) ** 2).mean(dim=(0, 1, 3))
    naive = ((targets - last) ** 2).mean(dim=(0, 1, 3)).clamp_min(1e-12)
    return [round(float(v), 4) for v in net / naive]


def pretrain(
    config: PretrainConfig,
    out: str | Path,
    engine_config: EngineConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PretrainReport:
    """Make the corpus windows, train a network on them and write the weights to ``out``."""
    out = Path(out)
    # the replay only normalises and weighs the corpus: a random, never-fitted network (its
    # cold start), as when the shipped weights were made, not the pretrained default
    engine_config = replace(engine_config or EngineConfig(), model=config.model, init="random")
    start = time.perf_counter()
    windows = corpus_windows(
        config, engine_config, (lambda d, n: progress("replay", d, n)) if progress else None
    )
    replay_s = time.perf_counter() - start
    log.info(
        "pretraining on %d windows of %d series (%.1fs to replay)",
        len(windows),
        config.series,
        replay_s,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = RecurrentVAEGAN(config.model)
    trainer = Trainer(
        model,
        config.learning_rate,
        config.critic_learning_rate,
        config.batch_size,
        engine_config.burn_in,
        config.seed,
        torch.device("cpu"),
    )
    start = time.perf_counter()
    totals: dict[str, float] = {}
    report_every = max(config.steps // 20, 1)
    done = 0
    while done < config.steps:
        part = min(report_every, config.steps - done)
        losses = trainer.train(windows, part)
        assert losses is not None  # no should_stop given
        for k, v in losses.items():
            totals[k] = v  # the last chunk's means
        done += part
        if progress is not None:
            progress("train", done, config.steps)
        log.debug(
            "step %d/%d losses %s", done, config.steps, {k: round(v, 3) for k, v in losses.items()}
        )
    train_s = time.perf_counter() - start
    holdout = corpus_windows(
        replace(config, series=max(config.series // 10, 1), seed=config.seed + HOLDOUT_SEED_OFFSET),
        engine_config,
    )
    ratio = holdout_forecast_ratio(trainer.model, holdout, engine_config.burn_in)
    log.info("held-out synthetic series: forecast MSE / last value's MSE by step %s", ratio)
    recipe = {
        "pretrain_config": asdict(config),
        "command": (
            f"streamvgan pretrain --out {out.name} --series {config.series} "
            f"--steps {config.steps} --seed {config.seed} --hidden-size "
            f"{config.model.hidden_size} --latent-size {config.model.latent_size}"
        ),
        "replay_s": round(replay_s, 1),
        "train_s": round(train_s, 1),
        "n_windows": len(windows),
        "losses": {k: round(v, 4) for k, v in totals.items()},
        "holdout_mse_ratio_to_last_by_step": ratio,
    }
    sha = save_pretrained(out, trainer.weights(), config.model, recipe)
    return PretrainReport(out, sha, len(windows), replay_s, train_s, totals)
