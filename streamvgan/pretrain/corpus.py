"""A synthetic pretraining corpus, generated in code: no file is read, so no benchmark leaks in.

The families follow what pretrained forecasters use because real metrics look like them:

* **Gaussian-process kernel compositions** (Chronos' KernelSynth, Ansari et al. 2024): up to
  ``max_kernels`` kernels from a bank (periodic at the periods real metrics have, RBF and
  rational-quadratic for smooth drift, dot-product for trends, white noise, constant), joined
  by ``+`` or ``*``, and one path drawn from the resulting covariance;
* **piecewise-linear trends**, **ARMA(2, 2)** processes and **random walks** (TimesFM's
  synthetic mix, Das et al. 2024);
* **level shifts**, **intermittent count-like** series (demand, error counts) and
  **heteroscedastic noise** (bursty latency); all but the counts optionally ride on a
  seasonal profile of a few harmonics of one of the same periods.

Every series gets a random offset and scale spanning many orders of magnitude, because the
engine's online normaliser has to cope with any scale; normalisation itself is left to the
engine (the pretrainer feeds the raw values through it), so the network sees exactly what a
stream would show it.

>>> corpus = SyntheticCorpus(CorpusConfig(min_length=64, max_length=128), seed=0)
>>> series = corpus.sample()
>>> finite = bool(np.isfinite(series.values).all())
>>> 64 <= len(series.values) <= 128, series.values.dtype.name, finite
(True, 'float64', True)
>>> [s.family for s in SyntheticCorpus(CorpusConfig(), seed=0).take(3)] == [
...     s.family for s in SyntheticCorpus(CorpusConfig(), seed=0).take(3)]
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from streamvgan.errors import ConfigurationError

#: Periods real metrics have: week of days, months, hours of a day at 1 h / 30 min / 15 min /
#: 10 min / 5 min, weeks of a year, a week of hours, a week at 30 min.
PERIODS = (7, 12, 24, 48, 52, 96, 144, 168, 288, 336)

FAMILIES = (
    "kernel",
    "trend",
    "arma",
    "random_walk",
    "level_shift",
    "intermittent",
    "heteroscedastic",
)


@dataclass(frozen=True)
class CorpusConfig:
    """What the generator draws from.

    ``family_weights`` gives the relative frequency of each of :data:`FAMILIES` (in that
    order); the GP compositions dominate, as in KernelSynth.
    """

    min_length: int = 256
    max_length: int = 1024
    max_kernels: int = 5
    periods: tuple[int, ...] = PERIODS
    family_weights: tuple[float, ...] = (0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1)
    seasonal_share: float = 0.5  # share of non-GP series that ride on a seasonal profile

    def __post_init__(self) -> None:
        if not 16 <= self.min_length <= self.max_length:
            raise ConfigurationError(
                f"need 16 <= min_length <= max_length, got {self.min_length} and {self.max_length}"
            )
        if self.max_kernels < 1:
            raise ConfigurationError(f"max_kernels must be >= 1, got {self.max_kernels}")
        if len(self.family_weights) != len(FAMILIES) or min(self.family_weights) < 0:
            raise ConfigurationError(
                f"family_weights needs {len(FAMILIES)} non-negative weights "
                f"(one per family {FAMILIES}), got {self.family_weights}"
            )
        if not sum(self.family_weights) > 0:
            raise ConfigurationError("family_weights must not all be zero")
        if not self.periods or min(self.periods) < 2:
            raise ConfigurationError(f"periods must be >= 2, got {self.periods}")


@dataclass(frozen=True)
class SyntheticSeries:
    """One generated series: raw values (any offset and scale) and how it was made."""

    values: np.ndarray  # (length,) float64
    family: str
    period: int | None  # the dominant period where the series has one, else None
    recipe: str  # a readable description, e.g. "periodic(24) * rbf(80.3) + white(0.1)"


Kernel = Callable[[np.ndarray], np.ndarray]  # t (n,) -> covariance (n, n)


class SyntheticCorpus:
    """An endless, reproducible stream of synthetic series; ``seed`` fixes every draw."""

    def __init__(self, config: CorpusConfig | None = None, seed: int = 0) -> None:
        self.config = config or CorpusConfig()
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        weights = np.asarray(self.config.family_weights, dtype=np.float64)
        self._family_p = weights / weights.sum()

    def take(self, count: int) -> list[SyntheticSeries]:
        return [self.sample() for _ in range(count)]

    def __iter__(self) -> Iterator[SyntheticSeries]:
        while True:
            yield self.sample()

    def sample(self) -> SyntheticSeries:
        cfg, rng = self.config, self._rng
        length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
        family = FAMILIES[int(rng.choice(len(FAMILIES), p=self._family_p))]
        make = getattr(self, f"_{family}")
        values, period, recipe = make(length)
        # GP compositions draw their own periodic kernels; counts stay counts
        if family not in ("kernel", "intermittent") and rng.random() < cfg.seasonal_share:
            profile, period = self._seasonal_profile(length)
            values = values + profile * rng.uniform(0.5, 3.0) * (np.std(values) + 1e-3)
            recipe += f" + seasonal({period})"
        scale = 10.0 ** rng.uniform(-3, 4)
        offset = rng.normal() * scale * 10.0 ** rng.uniform(-1, 2) * (rng.random() < 0.5)
        if family == "intermittent":  # counts stay non-negative multiples of a unit
            offset = 0.0
        values = offset + scale * values
        return SyntheticSeries(np.asarray(values, dtype=np.float64), family, period, recipe)

    # --- families -------------------------------------------------------------------------

    def _kernel(self, length: int) -> tuple[np.ndarray, int | None, str]:
        rng = self._rng
        t = np.arange(length, dtype=np.float64)
        count = int(rng.integers(1, self.config.max_kernels + 1))
        kernel, recipe, period = None, "", None
        for _ in range(count):
            k, name, p = self._draw_kernel(length)
            if p is not None and period is None:
                period = p
            if kernel is None:
                kernel, recipe = k, name
            elif rng.random() < 0.5:
                kernel, recipe = _add(kernel, k), f"{recipe} + {name}"
            else:
                kernel, recipe = _mul(kernel, k), f"({recipe}) * {name}"
        assert kernel is not None
        cov = kernel(t) + 1e-6 * np.eye(length)
        path = self._gaussian_path(cov)
        return path, period, recipe

    def _trend(self, length: int) -> tuple[np.ndarray, int | None, str]:
        rng = self._rng
        knots = int(rng.integers(1, 6))
        at = np.sort(rng.choice(np.arange(1, length), size=knots - 1, replace=False))
        slopes = rng.normal(0, 1, size=knots) / length
        slope = np.repeat(slopes, np.diff(np.concatenate(([0], at, [length]))))
        noise = rng.uniform(0.005, 0.2)
        values = np.cumsum(slope) + noise * rng.normal(size=length)
        return values, None, f"piecewise_linear({knots}) + white({noise:.3g})"

    def _arma(self, length: int) -> tuple[np.ndarray, int | None, str]:
        rng = self._rng
        phi = _stationary_ar2(rng)
        theta = rng.uniform(-0.8, 0.8, size=2)
        e = rng.normal(size=length + 100)
        x = np.zeros(length + 100)
        for i in range(2, length + 100):
            ar = phi[0] * x[i - 1] + phi[1] * x[i - 2]
            x[i] = ar + e[i] + theta[0] * e[i - 1] + theta[1] * e[i - 2]
        return x[100:], None, f"arma(2,2) phi={np.round(phi, 2).tolist()}"

    def _random_walk(self, length: int) -> tuple[np.ndarray, int | None, str]:
        rng = self._rng
        drift = rng.normal(0, 0.05) * (rng.random() < 0.5)
        steps = rng.standard_t(df=rng.uniform(2.5, 30), size=length)
        return np.cumsum(steps + drift), None, f"random_walk(drift={drift:.3g})"

    def _level_shift(self, length: int) -> tuple[np.ndarray, int | None, str]:
        rng = self._rng
        shifts = int(rng.integers(1, 4))
        at = np.sort(rng.choice(np.arange(length // 8, length), size=shifts, replace=False))
        levels = np.zeros(length)
        for a in at:
            levels[a:] += rng.normal(0, 4)
        noise = _ar1(rng, length, rng.uniform(0, 0.9))
        return levels + noise, None, f"level_shifts({shifts}) + ar1"

    def _intermittent(self, length: int) -> tuple[np.ndarray, int | None, str]:
        rng = self._rng
        p = rng.uniform(0.05, 0.6)
        rate = rng.uniform(0.5, 20)
        counts = (rng.random(length) < p) * rng.poisson(rate, size=length)
        return counts.astype(np.float64), None, f"intermittent(p={p:.2f}, rate={rate:.1f})"

    def _heteroscedastic(self, length: int) -> tuple[np.ndarray, int | None, str]:
        rng = self._rng
        # GARCH(1,1)-like volatility clustering
        omega, a = 0.05, rng.uniform(0.05, 0.25)
        b = rng.uniform(0.5, 0.94 - a)
        var = omega / (1 - a - b)
        x = np.zeros(length)
        for i in range(length):
            x[i] = np.sqrt(var) * rng.normal()
            var = omega + a * x[i] ** 2 + b * var
        base = _ar1(rng, length, rng.uniform(0.5, 0.99)) * rng.uniform(0, 1)
        return base + x, None, f"garch(a={a:.2f}, b={b:.2f})"

    # --- pieces ---------------------------------------------------------------------------

    def _seasonal_profile(self, length: int) -> tuple[np.ndarray, int]:
        rng = self._rng
        period = self._draw_period(length)
        t = np.arange(length)
        harmonics = int(rng.integers(1, 5))
        profile = np.zeros(length)
        for k in range(1, harmonics + 1):
            profile += rng.normal(0, 1 / k) * np.sin(
                2 * np.pi * k * t / period + rng.uniform(0, 6.3)
            )
        return profile / (np.std(profile) + 1e-9), period

    def _draw_period(self, length: int) -> int:
        fitting = [p for p in self.config.periods if 2 * p <= length]
        if not fitting:
            return max(2, length // 4)
        return int(self._rng.choice(fitting))

    def _draw_kernel(self, length: int) -> tuple[Kernel, str, int | None]:
        rng = self._rng
        kind = rng.choice(["periodic", "periodic", "rbf", "rq", "dot", "white", "const"])
        if kind == "periodic":
            p = self._draw_period(length)
            ls = rng.uniform(0.5, 2.0)
            return _periodic(p, ls), f"periodic({p})", p
        if kind == "rbf":
            ls = float(length * 10 ** rng.uniform(-2, 0))
            return _rbf(ls), f"rbf({ls:.3g})", None
        if kind == "rq":
            ls, alpha = float(length * 10 ** rng.uniform(-2, 0)), float(rng.uniform(0.1, 10))
            return _rq(ls, alpha), f"rq({ls:.3g}, {alpha:.2g})", None
        if kind == "dot":
            c = float(rng.uniform(0, 1))
            return _dot(c, length), f"dot({c:.2g})", None
        if kind == "white":
            s = float(10 ** rng.uniform(-2, -0.5))
            return _white(s), f"white({s:.2g})", None
        c = float(rng.uniform(0.1, 1))
        return _const(c), f"const({c:.2g})", None

    def _gaussian_path(self, cov: np.ndarray) -> np.ndarray:
        z = self._rng.normal(size=cov.shape[0])
        try:
            return np.linalg.cholesky(cov) @ z
        except np.linalg.LinAlgError:  # products of kernels can lose definiteness numerically
            w, v = np.linalg.eigh(cov)
            return v @ (np.sqrt(np.clip(w, 0, None)) * z)


def _periodic(period: int, length_scale: float) -> Kernel:
    return lambda t: np.exp(
        -2 * np.sin(np.pi * np.abs(t[:, None] - t[None, :]) / period) ** 2 / length_scale**2
    )


def _rbf(length_scale: float) -> Kernel:
    return lambda t: np.exp(-0.5 * ((t[:, None] - t[None, :]) / length_scale) ** 2)


def _rq(length_scale: float, alpha: float) -> Kernel:
    return lambda t: (
        (1 + ((t[:, None] - t[None, :]) ** 2) / (2 * alpha * length_scale**2)) ** -alpha
    )


def _dot(c: float, length: int) -> Kernel:
    def k(t: np.ndarray) -> np.ndarray:
        u = t / length
        return c + u[:, None] * u[None, :]

    return k


def _white(sd: float) -> Kernel:
    return lambda t: sd**2 * np.eye(len(t))


def _const(c: float) -> Kernel:
    return lambda t: np.full((len(t), len(t)), c)


def _add(a: Kernel, b: Kernel) -> Kernel:
    return lambda t: a(t) + b(t)


def _mul(a: Kernel, b: Kernel) -> Kernel:
    return lambda t: a(t) * b(t)


def _stationary_ar2(rng: np.random.Generator) -> np.ndarray:
    # draw the two roots of the characteristic polynomial inside the unit circle
    r1, r2 = rng.uniform(-0.95, 0.95, size=2)
    return np.array([r1 + r2, -r1 * r2])


def _ar1(rng: np.random.Generator, length: int, phi: float) -> np.ndarray:
    e = rng.normal(size=length)
    x = np.empty(length)
    x[0] = e[0]
    for i in range(1, length):
        x[i] = phi * x[i - 1] + e[i]
    return x * np.sqrt(1 - phi**2)
