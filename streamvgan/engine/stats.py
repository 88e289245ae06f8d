"""Small statistics the engine keeps per channel: exponentially weighted moments, a robust
standard deviation, and season detection (autocorrelation)."""

from __future__ import annotations

import math

import numpy as np

_LN2 = math.log(2.0)


def ew_alpha(count: np.ndarray, halflife: float) -> np.ndarray:
    """Weight of the newest value in an exponentially weighted statistic: the plain mean's
    1 / (count + 1) until that falls below the half-life's ln 2 / halflife."""
    return np.maximum(1.0 / (count + 1.0), _LN2 / halflife)


def ew_moments(
    mean: np.ndarray, var: np.ndarray, d: np.ndarray, alpha: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exponentially weighted mean and variance after a value at deviation ``d`` from ``mean``."""
    return mean + alpha * d, (1 - alpha) * (var + alpha * d**2)


def robust_std(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``sqrt(var)``, floored relative to the level so that constant streams of any scale
    normalise sanely."""
    return np.sqrt(np.maximum(var, (1e-4 * np.abs(mean) + 1e-12) ** 2))


def seasonal_period(values: np.ndarray, min_correlation: float = 0.8, min_lag: int = 4) -> int:
    """The season length of ``values`` (1-D) in steps, or 0 if it has none.

    After the first zero crossing of the (unbiased) autocorrelation, the first stretch of lags
    where it reaches ``min_correlation``, up to half the length; the season is the lag of the
    highest correlation in that stretch (so a multiple of the season is never chosen over it).

    >>> t = np.arange(600)
    >>> seasonal_period(np.sin(2 * np.pi * t / 48) + 0.1 * np.cos(t * 1.3))
    48
    >>> seasonal_period(np.random.default_rng(0).normal(size=600))
    0
    """
    v = np.asarray(values, dtype=np.float64)
    v = v - v.mean()
    n = len(v)
    if n < 4 * min_lag or not np.any(v):
        return 0
    spectrum = np.fft.rfft(v, 2 * n)
    ac = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    ac = ac / ac[0] * n / (n - np.arange(n))  # unbiased: divide by the overlap
    half = n // 2
    negative = np.flatnonzero(ac[min_lag:half] < 0)
    if len(negative) == 0:
        return 0
    start = min_lag + int(negative[0])
    above = ac[start:half] >= min_correlation
    if not above.any():
        return 0
    first = start + int(np.argmax(above))
    below = np.flatnonzero(ac[first:half] < min_correlation)
    last = first + (int(below[0]) if len(below) else half - first)
    return first + int(np.argmax(ac[first:last]))


#: stream event counts at which a season is first looked for, before every half window
SEASON_FIRST_SEARCHES = (48, 96, 192)


def season_search_due(count: np.ndarray, window: int) -> np.ndarray:
    """Whether each channel that has just seen its ``count``-th value looks for a season now:
    at :data:`SEASON_FIRST_SEARCHES` (so a short series, e.g. 144 months, finds its season of
    12 after four seasons) and then every half ``window``."""
    early = np.isin(count, [c for c in SEASON_FIRST_SEARCHES if c < window])
    return early | (count % max(window // 2, 1) == 0)


def season_search_due_one(count: int, window: int) -> bool:
    """:func:`season_search_due` of one channel, in Python ints (the batch-1 path)."""
    return count % max(window // 2, 1) == 0 or (count < window and count in SEASON_FIRST_SEARCHES)


def find_season(values: np.ndarray, min_correlation: float = 0.8) -> int:
    """The season of ``values`` (1-D): :func:`seasonal_period` of the values, or, if they show
    none, of their first differences (a strong trend hides a season from the autocorrelation
    of the levels: airline passengers grow for years while repeating every 12 months).

    >>> t = np.arange(96)
    >>> trend_and_season = 3.0 * t + 20 * np.sin(2 * np.pi * t / 12)
    >>> seasonal_period(trend_and_season), find_season(trend_and_season)
    (0, 12)
    """
    period = seasonal_period(values, min_correlation)
    if period == 0 and len(values) > 2:
        period = seasonal_period(np.diff(np.asarray(values, dtype=np.float64)), min_correlation)
    return period
