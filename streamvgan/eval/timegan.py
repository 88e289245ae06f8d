"""TimeGAN's own sines protocol, for a like-for-like row beside the published generators.

Yoon, Jarrett & van der Schaar, "Time-series Generative Adversarial Networks" (NeurIPS 2019),
code jsyoon0823/TimeGAN: ``sine_data_generation(no=10000, seq_len=24, dim=5)`` draws, per
window and per dimension, a frequency and a phase from U(0, 0.1) and writes
``(sin(f t + p) + 1) / 2`` for t = 0..23, so every value lies in [0, 1]. A generator learns the
10,000 windows and draws as many windows *unconditionally*; the post-hoc discriminator, a
one-layer GRU with ``dim / 2`` = 2 units reading the whole window, is trained 2,000 iterations
(Adam, batch 128) on 80% of real and synthetic windows; the score is ``|accuracy - 0.5|`` on
the other 20%, averaged over 10 trainings (``metric_iteration``). Published: TimeGAN 0.011,
TimeVAE 0.041, Diffusion-TS 0.006 (lower is better).

streamvgan's side (:func:`train_and_sample`): the network of the joint field mode (one
recurrent VAE-GAN reading the 5 values of a step together, ``n_features=5``) is trained on the
windows with the engine's :class:`~streamvgan.engine.training.Trainer` (ELBO + forecast NLL +
the critic's hinge term on whole 24-step windows), in the engine's normalised units (here
``(x - 0.5) / 0.5``). Each window is read after one constant start step, so the state the
network generates from is the same for every window; sampling runs the learned prior ->
decoder -> GRU from that state for 24 steps, with no real value to condition on; each step is
drawn from the decoder's Gaussian (as :meth:`RecurrentVAEGAN.generate` does for the engine's
continuations), or with ``observation_noise=False`` is the decoder's mean given the latent. The
samples are mapped back to the data's units and not clipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamvgan.errors import ConfigurationError
from streamvgan.eval.generation import discriminative_score
from streamvgan.progress import Progress

log = logging.getLogger(__name__)

__all__ = [
    "GENERATORS",
    "PUBLISHED",
    "TimeGANConfig",
    "TimeGANRow",
    "format_table",
    "run",
    "run_generators",
    "sines",
    "to_json",
]

#: Discriminative scores on 5-dimensional sines, from the papers' tables.
PUBLISHED = {
    "TimeGAN (Yoon et al. 2019)": 0.011,
    "TimeVAE (Desai et al. 2021)": 0.041,
    "Diffusion-TS (Yuan & Qiao 2024)": 0.006,
}
SEQ_LEN = 24
DIM = 5


def sines(n: int = 10_000, seq_len: int = SEQ_LEN, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """TimeGAN's ``sine_data_generation``: (n, seq_len, dim) windows in [0, 1].

    >>> x = sines(100, seed=1)
    >>> x.shape, bool(x.min() >= 0.0 and x.max() <= 1.0)
    ((100, 24, 5), True)
    """
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.0, 0.1, (n, 1, dim))
    phase = rng.uniform(0.0, 0.1, (n, 1, dim))
    t = np.arange(seq_len)[None, :, None]
    return (np.sin(freq * t + phase) + 1.0) * 0.5


@dataclass(frozen=True)
class TimeGANConfig:
    """The generator's training and the judging, with the protocol's values as defaults."""

    n_windows: int = 10_000
    train_steps: int = 3000  # the network's optimiser steps (batch ``batch_size``)
    batch_size: int = 128
    learning_rate: float = 2e-3
    critic_learning_rate: float = 1e-3
    hidden_size: int = 32
    latent_size: int = 4
    adversarial: bool = True
    # True: each generated step is drawn from the decoder's Gaussian, as the engine's
    # continuations are; False: the decoder's mean given a latent drawn from the prior (as
    # TimeVAE outputs its decoder's mean)
    observation_noise: bool = True
    min_scale: float = 0.02  # ModelConfig.min_scale: the floor of the decoder's scale
    disc_steps: int = 2000  # TimeGAN's iterations of the post-hoc discriminator
    disc_runs: int = 10  # TimeGAN's metric_iteration
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_windows", "train_steps", "batch_size", "disc_steps", "disc_runs"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")


def train_and_sample(real: np.ndarray, config: TimeGANConfig) -> tuple[np.ndarray, float]:
    """Train the joint-mode network on ``real`` (N, T, F) in [0, 1] and draw N windows
    unconditionally; the samples in the data's units and the training seconds."""
    import torch

    from streamvgan.engine.training import Trainer, TrainingWindows
    from streamvgan.nn.model import ModelConfig, RecurrentVAEGAN

    n, t, f = real.shape
    model_config = ModelConfig(
        n_features=f,
        hidden_size=config.hidden_size,
        latent_size=config.latent_size,
        critic_window=t,  # the critic judges whole windows, as TimeGAN's discriminator does
        horizon=min(12, t - 2),
        adversarial=config.adversarial,
        min_scale=config.min_scale,
    )
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = RecurrentVAEGAN(model_config)
    x = ((real - 0.5) / 0.5).astype(np.float32)
    start = np.zeros((n, 1, f), dtype=np.float32)  # the constant step every window follows
    windows = TrainingWindows(np.concatenate([start, x], axis=1), np.ones((n, t + 1), np.float32))
    trainer = Trainer(
        model,
        config.learning_rate,
        config.critic_learning_rate,
        config.batch_size,
        burn_in=1,
        seed=config.seed,
        device=torch.device("cpu"),
    )
    t0 = time.perf_counter()
    chunk = max(1, config.train_steps // 20)
    with Progress(config.train_steps, "TimeGAN sines: training", unit="step") as progress:
        done = 0
        while done < config.train_steps:
            steps = min(chunk, config.train_steps - done)
            losses = trainer.train(windows, steps)
            done += steps
            note = ", ".join(f"{k} {v:.3f}" for k, v in (losses or {}).items())
            progress.update(steps, note=note)
    seconds = time.perf_counter() - t0
    trained = trainer.model
    trained.eval()
    gen = torch.Generator().manual_seed(config.seed + 7)
    with torch.no_grad():
        h = trained.advance(torch.zeros(1, f), torch.zeros(1, config.hidden_size))
        h = h.expand(n, -1).contiguous()
        drawn: list[torch.Tensor] = []
        for _ in range(t):  # RecurrentVAEGAN.generate, with the observation noise optional
            mu, logvar = trained.latent_prior(h)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            mean, scale = trained.decode(z, h)
            x_t = mean + scale * torch.randn(mean.shape, generator=gen)
            x_t = x_t if config.observation_noise else mean
            drawn.append(x_t)
            h = trained.advance(x_t, h)
        samples = torch.stack(drawn, dim=1).numpy()
    return samples.astype(np.float64) * 0.5 + 0.5, seconds


@dataclass
class TimeGANRow:
    generator: str
    discriminative: float
    discriminative_std: float
    runs: list[float] = field(repr=False)
    train_seconds: float
    judge_seconds: float
    config: dict[str, Any]


def run(config: TimeGANConfig, name: str = "streamvgan") -> TimeGANRow:
    """Train, sample and judge one generator by TimeGAN's protocol."""
    real = sines(config.n_windows, seed=config.seed)
    synthetic, train_seconds = train_and_sample(real, config)
    if not np.isfinite(synthetic).all():
        raise ConfigurationError(
            f"{name}: the trained network generated non-finite values; lower learning_rate "
            f"(now {config.learning_rate}) or train_steps"
        )
    t0 = time.perf_counter()
    hidden = max(1, DIM // 2)
    scores = []
    with Progress(config.disc_runs, "TimeGAN sines: discriminator", unit="run") as progress:
        for r in range(config.disc_runs):
            d = discriminative_score(
                real, synthetic, steps=config.disc_steps, seed=config.seed + r, hidden=hidden
            )
            scores.append(d)
            progress.update(1, note=f"{d:.4f}")
    return TimeGANRow(
        name,
        float(np.mean(scores)),
        float(np.std(scores)),
        scores,
        train_seconds,
        time.perf_counter() - t0,
        asdict(config),
    )


#: ``name -> settings`` of the generators ``streamvgan evaluate timegan`` can run.
GENERATORS: dict[str, dict[str, Any]] = {
    "streamvgan": {},
    "streamvgan_noadv": {"adversarial": False},
    "streamvgan_mean": {"observation_noise": False},
}


def run_generators(
    names: list[str], config: TimeGANConfig, params: dict[str, dict[str, Any]] | None = None
) -> list[TimeGANRow]:
    """:func:`run` for each named generator (:data:`GENERATORS`), ``params`` overriding the
    config's fields per generator."""
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        raise ConfigurationError(
            f"unknown generators {unknown}; choose from {', '.join(GENERATORS)}"
        )
    rows = []
    for name in names:
        merged = {**asdict(config), **GENERATORS[name], **(params or {}).get(name, {})}
        try:
            cfg = TimeGANConfig(**merged)
        except TypeError as exc:
            raise ConfigurationError(
                f"--params for {name}: {exc}; the fields are those of TimeGANConfig: "
                f"{', '.join(asdict(config))}"
            ) from None
        rows.append(run(cfg, name))
        log.info("%s: discriminative %.4f", name, rows[-1].discriminative)
    return rows


def format_table(rows: list[TimeGANRow]) -> str:
    """Markdown: this run's rows, then the published ones."""
    lines = [
        "| Generator | discriminative score (mean +- sd over runs) | source |",
        "|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.generator} | {r.discriminative:.3f} +- {r.discriminative_std:.3f} | this run, "
            f"{len(r.runs)} discriminators; training {r.train_seconds:.0f} s |"
        )
    for name, value in PUBLISHED.items():
        lines.append(f"| {name} | {value:.3f} | published |")
    return "\n".join(lines)


def to_json(rows: list[TimeGANRow]) -> dict[str, Any]:
    return {
        r.generator: {
            "discriminative": r.discriminative,
            "discriminative_std": r.discriminative_std,
            "runs": r.runs,
            "train_seconds": round(r.train_seconds, 2),
            "judge_seconds": round(r.judge_seconds, 2),
            "config": r.config,
        }
        for r in rows
    }
