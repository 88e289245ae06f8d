"""Forecasts and sampled continuations of one stream from its channels' state.

The forecast blends the network's forecast with the last value (persistence), weighted by the
inverse of each one's recent squared one-step error times the step ahead (Bates & Granger
1969), and, where a season is known, that blend with a seasonal forecast (the value one season
back, the same plus the last season-on-season change, or the mean of a few seasons, whichever
erred least at that step over the season ring), weighted by its squared error there
(``forecast_blend``). Before the first fit it is the last value, with a band from the running
standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from streamvgan.engine.config import EngineConfig
from streamvgan.engine.state import StateTable
from streamvgan.engine.stats import robust_std
from streamvgan.engine.types import Forecast, ForecastColumns
from streamvgan.errors import InvalidInputError
from streamvgan.nn.model import RecurrentVAEGAN

Candidate = tuple[np.ndarray, np.ndarray, np.ndarray]  # (mean, spread, mse), one shape

MAX_SEASONS_AVERAGED = 4  # seasonal forms: the mean of up to this many past seasons
MIN_ORIGINS = 8  # past origins on the season ring that a seasonal form's error needs


def inverse_mse_blend(candidates: list[Candidate]) -> tuple[np.ndarray, np.ndarray]:
    """Combine forecasts ``(mean, spread, mse)`` (arrays of one shape) with weights
    proportional to 1 / mse (an infinite mse weighs 0, a zero mse takes all the weight)."""
    mse = np.stack([np.maximum(c[2], 1e-12) for c in candidates])
    w = (1.0 / mse) / (1.0 / mse).sum(axis=0)
    mean = sum(wi * c[0] for wi, c in zip(w, candidates))
    spread = sum(wi * c[1] for wi, c in zip(w, candidates))
    return mean, spread


def forecast(
    cfg: EngineConfig,
    st: StateTable,
    streams: Sequence[str],
    model_version: int,
    z: dict[float, float],
) -> list[Forecast]:
    """The forecasts of ``streams`` (:func:`forecast_columns`), one object each."""
    return forecast_columns(cfg, st, streams, model_version, z).forecasts()


def forecast_columns(
    cfg: EngineConfig,
    st: StateTable,
    streams: Sequence[str],
    model_version: int,
    z: dict[float, float],
) -> ForecastColumns:
    """The forecasts of ``streams``, computed for all their channels at once (every step is
    elementwise per channel, so this equals one stream at a time to the last bit); ``z`` maps
    each quantile level to its standard normal quantile."""
    channels = [st.channels(stream) for stream in streams]
    horizon = cfg.horizon
    rows = np.cumsum([0] + [len(slots) for _, slots in channels]).tolist()
    if not channels:
        empty = np.zeros((0, horizon, st.last.shape[-1]))
        joint = cfg.field_mode == "joint"
        return ForecastColumns([], [], rows, empty, empty, z, joint, model_version)
    sizes = [len(slots) for _, slots in channels]
    slots = np.concatenate([s for _, s in channels])
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
    names = [fields for fields, _ in channels]
    joint = cfg.field_mode == "joint"
    return ForecastColumns(list(streams), names, rows, mean, spread, z, joint, model_version)


def _blend(
    cfg: EngineConfig,
    st: StateTable,
    slots: np.ndarray,
    std: np.ndarray,
    mean: np.ndarray,
    spread: np.ndarray,
    last: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The network's forecast blended with the last value (and a seasonal forecast, where a
    season is known) by inverse-MSE weights from the recent one-step errors; equal weights
    until both have been measured."""
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
    # both errors grow with the step ahead alike, so their weights do not depend on it; the
    # network left out (forecast_network=False, an ablation): infinite error, weight 0
    if not cfg.forecast_network:
        e_m = np.full_like(e_m, np.inf)
    candidates = [
        (mean, spread, e_m[:, None, :] * steps),
        (last, last_spread, e_l[:, None, :] * steps),
    ]
    season = seasonal_forecast(cfg, st, slots, std)
    if season is None:
        return inverse_mse_blend(candidates)
    # and the seasonal forecast, where a season is known: its error does not grow within a
    # season, so it weighs more the further ahead. The network and the last value both track
    # the recent level, so their errors move together: against the season they count as one
    # candidate (their blend) with the smaller of their errors, not twice. Channels without
    # a season: infinite error, weight exactly 0, so their blend is unchanged to the last bit
    pair_mean, pair_spread = inverse_mse_blend(candidates)
    pair = (pair_mean, pair_spread, np.minimum(e_m, e_l)[:, None, :] * steps)
    s_mean, s_spread, s_mse = season
    return inverse_mse_blend(
        [pair, (s_mean, s_spread, np.where(measured[:, None, :], s_mse, np.inf))]
    )


def seasonal_forecast(
    cfg: EngineConfig, st: StateTable, slots: np.ndarray, std: np.ndarray
) -> Candidate | None:
    """The seasonal forecast of channels ``slots`` and its band, in original units, and its
    mean squared error in normalised units, as (U, H, F) each; None if no channel has a
    season and enough history to measure it. Channels without one get an infinite error
    (weight 0). At each step ahead it is the best, over the season ring, of these forms:

    * seasonal naive, the value one season before the step (a repeating profile);
    * seasonal naive plus the last season-on-season change ``x_t - x_{t-P}``, once per season
      ahead (Box-Jenkins' seasonal random walk on first differences, SARIMA(0,1,0)(0,1,0):
      a season riding on a trend, such as airline passengers);
    * the mean of the last 2..``MAX_SEASONS_AVERAGED`` seasons at that step (a repeating
      profile under noise: the mean of k seasons has (1 + 1/k) / 2 of the naive's variance).

    Each form's error at step ``h`` is measured on the ring as if it had forecast from every
    past origin (all are functions of past values only)."""
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
    for u, f in zip(*np.nonzero(usable)):
        ring = st.season_values(slots[u], n[u])[:, f] / std[u, f]  # oldest first, normalised
        m, e = _seasonal_forms(ring, int(period[u, f]), horizon)
        mean[u, :, f], mse[u, :, f] = m * std[u, f], e
    spread = std[:, None, :] * np.sqrt(np.where(np.isfinite(mse), mse, 0.0))
    return mean, spread, mse


def _seasonal_forms(ring: np.ndarray, p: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Per step ahead 1..``horizon``: the best of the seasonal forms of
    :func:`seasonal_forecast` (season ``p``) from the end of ``ring``, and its mean squared
    error over ``ring`` (infinite where fewer than ``MIN_ORIGINS`` past origins measure it)."""
    last = len(ring) - 1
    h = np.arange(1, horizon + 1)[:, None]  # (H, 1)
    seasons = -(-h // p)  # whole seasons back, so the value lies in the past
    back = seasons * p
    t = np.arange(len(ring))[None, :]  # past origins (H, T) with a value h steps later
    valid = (t >= back) & (t <= last - h)

    def at(index: np.ndarray) -> np.ndarray:
        return ring[np.clip(index, 0, last)]

    change = seasons * (ring[t] - at(t - p))  # the season-on-season change, once per season
    naive = at(t + h - back)
    now_naive = at(last + h - back)[:, 0]
    forms_now = [now_naive, now_naive + seasons[:, 0] * (ring[last] - ring[last - p])]
    forms_past = [naive, naive + change]
    masks = [valid, valid]
    for k in range(2, MAX_SEASONS_AVERAGED + 1):  # the mean of the last k seasons
        if len(ring) < k * p + 1:
            break
        forms_now.append(np.mean([at(last + h - back - j * p)[:, 0] for j in range(k)], axis=0))
        forms_past.append(np.mean([at(t + h - back - j * p) for j in range(k)], axis=0))
        masks.append(valid & (t + h - back - (k - 1) * p >= 0))
    now = np.stack(forms_now)
    target = at(t + h)
    sq = np.stack([np.where(m, (target - f) ** 2, 0.0) for f, m in zip(forms_past, masks)])
    count = np.stack(masks).sum(axis=2)  # (forms, H)
    err = np.where(count >= MIN_ORIGINS, sq.sum(axis=2) / np.maximum(count, 1), np.inf)
    best = np.argmin(err, axis=0)  # the naive form where none is measured
    steps = np.arange(horizon)
    return now[best, steps], err[best, steps]


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
    return continuations_of(cfg, st, [stream], model, horizon, n_samples, generator)[0]


def continuations_of(
    cfg: EngineConfig,
    st: StateTable,
    streams: Sequence[str],
    model: RecurrentVAEGAN | None,
    horizon: int,
    n_samples: int,
    generator: torch.Generator,
) -> list[np.ndarray]:
    """:func:`continuations` of each of ``streams``, every channel of all of them run forward
    together (one closed loop of the network instead of one per stream; for one stream the
    same draws as :func:`continuations`, for several the same distribution, other draws)."""
    for name, value in (("horizon", horizon), ("n_samples", n_samples)):
        if not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    channels = [st.channels(stream) for stream in streams]
    if not channels:
        return []
    slots = np.concatenate([s for _, s in channels])
    device = generator.device
    mean = st.norm_mean[slots]
    std = robust_std(mean, st.norm_var[slots])
    u, f = len(slots), cfg.model.n_features
    if model is not None:
        h = torch.from_numpy(np.repeat(st.h[slots], n_samples, axis=0)).to(device)
        xn = model.sample_continuations(h, horizon, generator).cpu().numpy()
        xn = xn.reshape(u, n_samples, horizon, f)
        samples = mean[:, None, None, :] + std[:, None, None, :] * xn
    else:
        noise = torch.randn((u, n_samples, horizon, f), generator=generator, device=device)
        samples = st.last[slots][:, None, None, :] + std[:, None, None, :] * noise.cpu().numpy()
    out, first = [], 0
    for _, own in channels:
        part = samples[first : first + len(own)]  # (channels, n, H, F)
        first += len(own)
        if cfg.field_mode == "channels":
            out.append(np.moveaxis(part[..., 0], 0, -1))  # (n, H, fields)
        else:
            out.append(part[0])
    return out
