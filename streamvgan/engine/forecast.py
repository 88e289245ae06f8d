"""Forecasts and sampled continuations of one stream from its channels' state.

The forecast blends the network's forecast with the last value (persistence), weighted by the
inverse of each one's recent squared one-step error times the step ahead (Bates & Granger
1969), and, where a season is known, with the value one season back, weighted by its squared
error over the season ring (``forecast_blend``). Before the first fit it is the last value,
with a band from the running standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from streamvgan.engine.config import EngineConfig
from streamvgan.engine.state import StateTable
from streamvgan.engine.stats import robust_std
from streamvgan.engine.types import Forecast
from streamvgan.errors import InvalidInputError
from streamvgan.nn.model import RecurrentVAEGAN

Candidate = tuple[np.ndarray, np.ndarray, np.ndarray]  # (mean, spread, mse), one shape


def inverse_mse_blend(candidates: list[Candidate]) -> tuple[np.ndarray, np.ndarray]:
    """Combine forecasts ``(mean, spread, mse)`` (arrays of one shape) with weights
    proportional to 1 / mse (an infinite mse weighs 0, a zero mse takes all the weight)."""
    mse = np.stack([np.maximum(c[2], 1e-12) for c in candidates])
    w = (1.0 / mse) / (1.0 / mse).sum(axis=0)
    mean = sum(wi * c[0] for wi, c in zip(w, candidates))
    spread = sum(wi * c[1] for wi, c in zip(w, candidates))
    return mean, spread


def _to_fields(field_mode: str) -> Callable[[np.ndarray], np.ndarray]:
    """(U, H, F) -> (H, fields): channels are one field each, joint is one row of F."""
    if field_mode == "channels":
        return lambda a: a[:, :, 0].T
    return lambda a: a[0]


def forecast(
    cfg: EngineConfig,
    st: StateTable,
    streams: Sequence[str],
    model_version: int,
    z: dict[float, float],
) -> list[Forecast]:
    """The forecasts of ``streams``, computed for all their channels at once (every step is
    elementwise per channel, so this equals one stream at a time to the last bit); ``z`` maps
    each quantile level to its standard normal quantile."""
    channels = [st.channels(stream) for stream in streams]
    if not channels:
        return []
    sizes = [len(slots) for _, slots in channels]
    slots = np.concatenate([s for _, s in channels])
    horizon = cfg.horizon
    std = robust_std(st.norm_mean[slots], st.norm_var[slots])  # (U, F)
    last = np.repeat(st.last[slots][:, None, :], horizon, axis=1)  # persistence (U, H, F)
    last_spread = np.repeat(std[:, None, :], horizon, axis=1)
    mean, spread = last, last_spread
    # the network serves a stream once it is fitted and every channel has a value
    served = np.repeat([int(st.n[s].min()) >= 1 for _, s in channels], sizes)
    if model_version > 0 and served.any():
        net_mean = st.norm_mean[slots][:, None, :] + std[:, None, :] * st.f_mean[slots]
        net_spread = std[:, None, :] * st.f_scale[slots]
        if cfg.forecast_blend:
            net_mean, net_spread = _blend(cfg, st, slots, std, net_mean, net_spread, last)
        on = served[:, None, None]
        mean, spread = np.where(on, net_mean, last), np.where(on, net_spread, last_spread)
    to_fields = _to_fields(cfg.field_mode)
    out, start = [], 0
    for stream, (names, _), size in zip(streams, channels, sizes):
        m, sp = mean[start : start + size], spread[start : start + size]
        start += size
        quantiles = {q: to_fields(m + zq * sp) for q, zq in z.items()}
        out.append(
            Forecast(stream, names, to_fields(m), quantiles, model_version, model_version > 0)
        )
    return out


def _blend(
    cfg: EngineConfig,
    st: StateTable,
    slots: np.ndarray,
    std: np.ndarray,
    mean: np.ndarray,
    spread: np.ndarray,
    last: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The network's forecast blended with the last value (and the value one season back)
    by inverse-MSE weights from the recent one-step errors; equal weights until both have been
    measured."""
    horizon = cfg.horizon
    e_m, e_l = (
        st.err_model[slots].astype(np.float64),
        st.err_last[slots].astype(np.float64),
    )
    measured = (st.warm_n[slots] >= 2)[:, None] & (e_m + e_l > 0)
    e_m, e_l = np.where(measured, e_m, 1.0), np.where(measured, e_l, 1.0)
    # the last value's band: its own one-step error, growing as a random walk's
    steps = np.arange(1, horizon + 1)[None, :, None]
    walk = std[:, None, :] * np.sqrt(e_l[:, None, :] * steps)
    last_spread = np.where(
        (measured & (st.err_last[slots] > 0))[:, None, :],
        walk,
        np.repeat(std[:, None, :], horizon, axis=1),
    )
    # both errors grow with the horizon alike, so their weights do not depend on it
    candidates = [
        (mean, spread, e_m[:, None, :] * steps),
        (last, last_spread, e_l[:, None, :] * steps),
    ]
    # and the value one season back, where a season is known: its error does not grow within
    # a season, so it weighs more the further ahead (channels without one: infinite error,
    # weight exactly 0, so the blend of the others is unchanged to the last bit)
    season = seasonal_naive(cfg, st, slots, std)
    if season is not None:
        s_mean, s_spread, s_mse = season
        candidates.append((s_mean, s_spread, np.where(measured[:, None, :], s_mse, np.inf)))
    return inverse_mse_blend(candidates)


def seasonal_naive(
    cfg: EngineConfig, st: StateTable, slots: np.ndarray, std: np.ndarray
) -> Candidate | None:
    """The seasonal-naive forecast of channels ``slots`` (the value one season before each
    step) and its band, in original units, and its mean squared error over the season ring
    in normalised units, as (U, H, F) each; None if no channel has a season and enough
    history to measure it. Channels without one get an infinite error (weight 0)."""
    horizon = cfg.horizon
    if not cfg.season_window:
        return None
    period, n = st.period[slots].astype(np.int64), st.n[slots]  # (U, F), (U,)
    kept = np.minimum(n, cfg.season_window)[:, None]
    usable = (period > 0) & (kept - period >= 16)  # at least 16 pairs (x_t, x_{t-P})
    if not usable.any():
        return None
    u_count, f_count = period.shape
    mean = np.zeros((u_count, horizon, f_count))
    mse = np.full((u_count, horizon, f_count), np.inf)
    steps = np.arange(1, horizon + 1)
    for u, f in zip(*np.nonzero(usable)):
        p = int(period[u, f])
        ring = st.season_values(slots[u], n[u])[:, f]  # oldest first, last value at -1
        back = p * np.ceil(steps / p).astype(np.int64)  # whole seasons back, >= the step
        mean[u, :, f] = ring[len(ring) - 1 + steps - back]
        mse[u, :, f] = np.mean(((ring[p:] - ring[:-p]) / std[u, f]) ** 2)
    spread = std[:, None, :] * np.sqrt(np.where(np.isfinite(mse), mse, 0.0))
    return mean, spread, mse


def continuations(
    cfg: EngineConfig,
    st: StateTable,
    stream: str,
    model: RecurrentVAEGAN | None,
    horizon: int,
    n_samples: int,
    generator: torch.Generator,
) -> np.ndarray:
    """``n_samples`` sampled continuations (n_samples, horizon, n_fields) of ``stream`` in
    original units: the network run forward from the stream's state (prior, decoder, GRU), or,
    when ``model`` is None (before the first fit), independent draws around the last value
    with the running standard deviation."""
    for name, value in (("horizon", horizon), ("n_samples", n_samples)):
        if not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    _, slots = st.channels(stream)
    device = generator.device
    mean = st.norm_mean[slots]
    std = robust_std(mean, st.norm_var[slots])
    u, f = len(slots), cfg.model.n_features
    if model is not None:
        h = torch.from_numpy(np.repeat(st.h[slots], n_samples, axis=0)).to(device)
        with torch.no_grad():
            xn = model.generate(h, horizon, generator).cpu().numpy()
        xn = xn.reshape(u, n_samples, horizon, f)
        samples = mean[:, None, None, :] + std[:, None, None, :] * xn
    else:
        noise = torch.randn((u, n_samples, horizon, f), generator=generator, device=device)
        samples = st.last[slots][:, None, None, :] + std[:, None, None, :] * noise.cpu().numpy()
    if cfg.field_mode == "channels":
        return np.moveaxis(samples[..., 0], 0, -1)  # (n, H, fields)
    return samples[0]
