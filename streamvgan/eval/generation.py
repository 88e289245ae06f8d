"""Quality of generated continuations: TimeGAN's discriminative and predictive scores.

Yoon, Jarrett & van der Schaar, "Time-series Generative Adversarial Networks" (NeurIPS 2019)
judge synthetic sequences with two post-hoc models:

* **discriminative score**: a GRU classifier is trained to tell real from synthetic windows on
  80% of them; the score is ``|accuracy - 0.5|`` on the other 20% (0 = indistinguishable).
* **predictive score** ("train on synthetic, test on real"): a GRU is trained on the synthetic
  windows to predict each next value from the values before it, then its mean absolute error
  is measured on the real windows (lower is better; min-max scaled units).

Adaptations for one univariate stream, stated because they change what the numbers mean:

* TimeGAN samples whole windows unconditionally; streamvgan generates *continuations* of the
  series it has learnt. So the stream is learnt prequentially and at each of ``n_origins``
  evenly spaced origins ``t`` the generator draws one continuation of ``length`` steps from the
  state after ``y[:t]``. A real window is ``context`` observed values followed by the true next
  ``length`` values; its synthetic twin is the same context followed by the generated
  continuation (``context + length = 24``, TimeGAN's sequence length). The classifier therefore
  also sees whether a continuation fits the history it continues.
* TimeGAN sizes both GRUs at ``dim / 2`` units, which is 0 for one dimension; here both have 8
  units (one layer), enough to model a 24-step univariate window and small enough not to
  memorise a few hundred of them. Training: Adam (lr 1e-3), batch 128, ``steps`` iterations;
  the predictor uses the L1 loss as TimeGAN does.
* Values are min-max scaled with the real series' range, as TimeGAN scales its data.

The data are ``sines`` (TimeGAN's sine generator made into one stream: a sine whose frequency
``f ~ U(0.1, 1)`` rad/step and phase ``~ U(-pi, pi)`` are redrawn every 96 steps) and ``stocks``
(the equal-weighted index level of River's SP500Stocks; TimeGAN used Google's daily prices).
Published TimeGAN discriminative scores: 0.011 (sines), 0.102 (stocks); predictive: 0.093,
0.038 (on its own, unconditional task, so a reference point rather than a like-for-like one).
All randomness comes from seeded generators owned by each call.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamvgan.errors import ConfigurationError
from streamvgan.progress import Progress

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "GENERATORS",
    "GenerationReport",
    "GenerationRow",
    "RandomWalkGenerator",
    "WindowSet",
    "collect_windows",
    "discriminative_score",
    "format_table",
    "load_dataset",
    "predictive_score",
    "run_generation",
    "sines_series",
    "to_json",
]

PUBLISHED_TIMEGAN = {
    "sines": {"discriminative": 0.011, "predictive": 0.093},
    "stocks": {"discriminative": 0.102, "predictive": 0.038},
}
_HIDDEN = 8


def sines_series(n: int = 3000, segment: int = 96, seed: int = 0) -> np.ndarray:
    """One stream of sine segments with random frequency and phase (TimeGAN's sines, in time).

    >>> x = sines_series(200, seed=1)
    >>> x.shape, bool(np.all(np.abs(x) <= 1.0))
    ((200,), True)
    """
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    for start in range(0, n, segment):
        f, phase = rng.uniform(0.1, 1.0), rng.uniform(-math.pi, math.pi)
        t = np.arange(min(segment, n - start))
        out[start : start + len(t)] = np.sin(f * t + phase)
    return out


def _stocks() -> np.ndarray:
    from streamvgan.eval.forecast import river_series

    return river_series("sp500")


DATASETS: dict[str, Any] = {"sines": sines_series, "stocks": _stocks}


def load_dataset(name: str, seed: int = 0) -> np.ndarray:
    if name not in DATASETS:
        raise ConfigurationError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name](seed=seed) if name == "sines" else DATASETS[name]()


class RandomWalkGenerator:
    """A reference generator: continue from the last value with Gaussian steps whose standard
    deviation is that of the last 100 one-step changes.

    >>> g = RandomWalkGenerator(seed=0)
    >>> for y in [1.0, 2.0, 1.0, 2.0]:
    ...     g.learn_one(y)
    >>> len(g.generate(horizon=3, n_samples=2)), len(g.generate(3, 2)[0])
    (2, 3)
    """

    def __init__(self, seed: int = 0, window: int = 100):
        self.seed = seed
        self.window = window
        self._rng = np.random.default_rng(seed)
        self._hist: list[float] = []

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self._hist.append(float(y))
        if len(self._hist) > self.window + 1:
            del self._hist[0]

    def generate(self, horizon: int, n_samples: int) -> list[list[float]]:
        last = self._hist[-1] if self._hist else 0.0
        sd = float(np.std(np.diff(self._hist))) if len(self._hist) > 2 else 1.0
        steps = self._rng.normal(0.0, sd, size=(n_samples, horizon))
        return (last + np.cumsum(steps, axis=1)).tolist()


def _streamvgan(seed: int = 0, **params: Any) -> Any:
    try:
        from streamvgan.river import VAEGANForecaster
    except ImportError as exc:
        raise ConfigurationError(
            f"the streamvgan generator is not available ({exc}); run --generators randomwalk"
        ) from exc
    return VAEGANForecaster(seed=seed, **params)


GENERATORS: dict[str, tuple[Any, dict[str, Any]]] = {
    "streamvgan": (_streamvgan, {}),
    "streamvgan_noadv": (_streamvgan, {"adversarial": False}),
    # the shipped weights are variational: the ablation starts from random ones
    "streamvgan_novar": (_streamvgan, {"variational": False, "init": "random"}),
    "randomwalk": (lambda seed=0, **p: RandomWalkGenerator(seed=seed, **p), {}),
}


@dataclass
class WindowSet:
    """Real and synthetic windows (n, context + length), in the series' original units."""

    real: np.ndarray
    synthetic: np.ndarray
    origins: np.ndarray
    seconds: float


def collect_windows(
    series: np.ndarray,
    generator: Any,
    n_origins: int = 400,
    context: int = 8,
    length: int = 16,
    start: int | None = None,
) -> WindowSet:
    """Learn ``series`` point by point; at each origin draw one continuation before learning on.

    Origins are evenly spaced from ``start`` (default: a quarter of the series, so the
    generator has learnt before it is judged) to the last point with ``length`` values after it.
    """
    n = len(series)
    start = max(context, n // 4) if start is None else max(context, start)
    last = n - length
    if last <= start:
        raise ConfigurationError(f"series of {n} points is too short for windows of {length}")
    origins = np.unique(np.linspace(start, last, min(n_origins, last - start + 1)).round())
    origins = origins.astype(int)
    wanted = set(origins.tolist())
    real, synth = [], []
    t0 = time.perf_counter()
    for t in range(n):
        if t in wanted:
            # the generator has learnt y[:t]; the continuation covers y[t:t+length]
            path = np.asarray(generator.generate(length, 1)[0], dtype=float)
            ctx = series[t - context : t]
            real.append(np.concatenate([ctx, series[t : t + length]]))
            synth.append(np.concatenate([ctx, path]))
        generator.learn_one(float(series[t]))
    return WindowSet(np.array(real), np.array(synth), origins, time.perf_counter() - t0)


# -- the post-hoc models -------------------------------------------------------------------


def _gru_net(out_size: int, seed: int, n_in: int = 1, hidden: int = _HIDDEN) -> Any:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(n_in, hidden, batch_first=True)
            self.head = nn.Linear(hidden, out_size)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.gru(x)  # (batch, time, hidden)
            return self.head(h)  # (batch, time, out)

    net = Net()
    # Re-draw PyTorch's default uniform(-1/sqrt(fan), 1/sqrt(fan)) init from our own generator,
    # so results depend on `seed` and not on the global RNG.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            bound = 1.0 / math.sqrt(hidden)
            p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
    return net


def discriminative_score(
    real: np.ndarray,
    synthetic: np.ndarray,
    steps: int = 1000,
    seed: int = 0,
    lr: float = 1e-3,
    hidden: int = _HIDDEN,
) -> float:
    """``|accuracy - 0.5|`` of a GRU classifier (``hidden`` units) on a held-out 20%; windows
    already scaled, (N, T) univariate or (N, T, F).

    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(0.5, 0.1, (64, 24))
    >>> discriminative_score(a, a + 0.5, steps=40, lr=1e-2)    # trivially separable
    0.5
    """
    import torch

    rng = np.random.default_rng(seed)
    x = np.concatenate([real, synthetic]).astype(np.float32)
    if x.ndim == 2:
        x = x[..., None]
    y = np.concatenate([np.ones(len(real)), np.zeros(len(synthetic))]).astype(np.float32)
    idx = rng.permutation(len(x))
    n_train = int(0.8 * len(x))
    tr, te = idx[:n_train], idx[n_train:]
    net = _gru_net(1, seed, n_in=x.shape[-1], hidden=hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(steps):
        b = torch.from_numpy(rng.choice(tr, size=min(128, len(tr)), replace=False))
        logits = net(xt[b])[:, -1, 0]  # the classifier reads the last GRU state
        loss = loss_fn(logits, yt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (net(xt[te])[:, -1, 0] > 0).float()
    acc = float((pred == yt[te]).float().mean())
    return abs(acc - 0.5)


def predictive_score(
    train: np.ndarray, test: np.ndarray, steps: int = 1000, seed: int = 0, lr: float = 1e-3
) -> float:
    """MAE on ``test`` of a GRU trained on ``train`` to predict each next value (scaled windows).

    >>> t = np.linspace(0, 6, 24)
    >>> w = 0.5 + 0.4 * np.sin(t[None, :] + np.linspace(0, 3, 64)[:, None])
    >>> noise = np.random.default_rng(0).uniform(0, 1, w.shape)
    >>> fast = {"steps": 40, "lr": 1e-2}
    >>> predictive_score(w, w, **fast) < predictive_score(noise, w, **fast)
    True
    """
    import torch

    rng = np.random.default_rng(seed)
    xtr = torch.from_numpy(train[..., None].astype(np.float32))
    xte = torch.from_numpy(test[..., None].astype(np.float32))
    net = _gru_net(1, seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        b = torch.from_numpy(rng.choice(len(xtr), size=min(128, len(xtr)), replace=False))
        batch = xtr[b]
        loss = (net(batch[:, :-1]) - batch[:, 1:]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((net(xte[:, :-1]) - xte[:, 1:]).abs().mean())


# -- the run -------------------------------------------------------------------------------


@dataclass
class GenerationRow:
    dataset: str
    generator: str
    n_windows: int
    discriminative: float
    discriminative_std: float
    predictive: float
    predictive_real: float
    seconds_generate: float
    seconds_metrics: float


@dataclass
class GenerationReport:
    rows: list[GenerationRow]
    #: For plots: per dataset and generator, a few real and synthetic windows (scaled).
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def run_generation(
    generators: Sequence[str],
    datasets: Sequence[str] = ("sines", "stocks"),
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
    n_origins: int = 400,
    steps: int = 1000,
    repeats: int = 3,
    context: int = 8,
    length: int = 16,
) -> GenerationReport:
    """Both scores for every generator on every dataset; the post-hoc models are trained
    ``repeats`` times with seeds ``seed .. seed + repeats - 1`` and averaged."""
    t_all = time.perf_counter()
    report = GenerationReport(rows=[])
    with Progress(len(datasets) * len(generators), "generation runs", unit="run") as progress:
        for ds in datasets:
            series = load_dataset(ds, seed=seed)
            lo, hi = float(series.min()), float(series.max())
            report.examples[ds] = {}
            for name in generators:
                if name not in GENERATORS:
                    raise ConfigurationError(
                        f"unknown generator {name!r}; choose from {', '.join(GENERATORS)}"
                    )
                factory, fixed = GENERATORS[name]
                gen = factory(seed=seed, **{**fixed, **(params or {}).get(name, {})})
                ws = collect_windows(series, gen, n_origins, context, length)
                real = (ws.real - lo) / (hi - lo)
                synth = (ws.synthetic - lo) / (hi - lo)
                t0 = time.perf_counter()
                disc = [discriminative_score(real, synth, steps, seed + r) for r in range(repeats)]
                pred = [predictive_score(synth, real, steps, seed + r) for r in range(repeats)]
                pred_real = predictive_score(real, real, steps, seed)
                row = GenerationRow(
                    dataset=ds,
                    generator=name,
                    n_windows=len(real),
                    discriminative=float(np.mean(disc)),
                    discriminative_std=float(np.std(disc)),
                    predictive=float(np.mean(pred)),
                    predictive_real=pred_real,
                    seconds_generate=ws.seconds,
                    seconds_metrics=time.perf_counter() - t0,
                )
                report.rows.append(row)
                k = np.linspace(0, len(real) - 1, 4).round().astype(int)
                report.examples[ds][name] = {
                    "context": context,
                    "real": real[k].tolist(),
                    "synthetic": synth[k].tolist(),
                }
                progress.update(
                    1,
                    note=f"{name} on {ds}: discriminative {row.discriminative:.3f}, "
                    f"predictive {row.predictive:.4f} ({ws.seconds:.0f}s + "
                    f"{row.seconds_metrics:.0f}s)",
                )
    report.seconds = time.perf_counter() - t_all
    return report


def format_table(report: GenerationReport) -> str:
    lines = [
        "| Dataset | Generator | Windows | Discriminative (lower better) | Predictive TSTR MAE | "
        "Predictive TRTR MAE | Seconds (learn+generate / metrics) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.dataset} | {r.generator} | {r.n_windows} | {r.discriminative:.3f} ± "
            f"{r.discriminative_std:.3f} | {r.predictive:.4f} | {r.predictive_real:.4f} | "
            f"{r.seconds_generate:.0f} / {r.seconds_metrics:.0f} |"
        )
    for ds, pub in PUBLISHED_TIMEGAN.items():
        if any(r.dataset == ds for r in report.rows):
            lines.append(
                f"| {ds} | TimeGAN (published, unconditional) | | {pub['discriminative']:.3f} | "
                f"{pub['predictive']:.4f} | | |"
            )
    return "\n".join(lines)


def to_json(report: GenerationReport) -> dict[str, Any]:
    return {"seconds": report.seconds, "rows": [asdict(r) for r in report.rows]}
