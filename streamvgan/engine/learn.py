"""Learning from a scored batch: what one event changes in its channel's state.

After :class:`~streamvgan.engine.signals.SignalScorer` scored a batch (changing nothing),
:func:`learn` folds it into the state: the replay ring, the calibration history, the alert
cooldown, the range seen, the critic and forecast-error statistics, the normaliser (with its
re-levelling), the level statistics, the season ring and the network's new state.
"""

from __future__ import annotations

import numpy as np

from streamvgan.engine.config import EngineConfig
from streamvgan.engine.signals import ScoreBatch
from streamvgan.engine.state import StateTable
from streamvgan.engine.stats import (
    ew_alpha,
    ew_moments,
    find_season,
    robust_std,
    season_search_due,
)

#: the per-channel arrays one learning step writes, checked for NaN/inf after each step (the
#: replay ring gets the step's normalised value, checked on its own)
#: largest squared one-step error (in sd^2) the forecast blend averages (float32 state)
ERROR_CAP = 1e30

STEP_ARRAYS = (
    "h",
    "norm_mean",
    "norm_var",
    "last",
    "f_mean",
    "f_scale",
    "critic_mean",
    "critic_var",
    "err_model",
    "err_last",
    "recent",
    "cal_mean",
    "cal_var",
    "lvl_mean",
    "lvl_var",
    "lvl_short",
    "seen_min",
    "seen_max",
)


def held(weight: np.ndarray, count: np.ndarray, reference_events: int) -> np.ndarray:
    """``weight``, 0 where ``count`` values have been learned past a reference of
    ``reference_events`` (0: no reference, ``weight`` unchanged)."""
    return np.where(count >= reference_events, 0.0, weight) if reference_events else weight


def learn(cfg: EngineConfig, st: StateTable, b: ScoreBatch) -> None:
    """Advance the channels ``b.slots`` past the events ``b.values`` they were scored on."""
    slots, values = b.slots, b.values
    n, mean, var, std, xn = b.n, b.mean, b.var, b.std, b.xn
    anomalous = b.likely >= cfg.downweight_threshold
    weight = np.where(anomalous, cfg.anomalous_weight, 1.0)
    cal_weight = np.where(anomalous, cfg.anomalous_calibration_weight, 1.0)
    st.push(slots, xn.astype(np.float32), weight)
    st.recent[slots, n % st.sizes["S"]] = b.signals
    # calibration statistics, the alert cooldown and the range of values seen
    cal_n = st.cal_n[slots]
    st.cal_n[slots] = cal_n + 1
    # past its reference a signal's calibration holds; counted per signal, since the model
    # signal's calibration restarts at the first fit
    cal_alpha = held(
        ew_alpha(cal_n, cfg.calibration_halflife) * cal_weight[:, None], cal_n, cfg.reference_events
    )
    st.cal_mean[slots], st.cal_var[slots] = ew_moments(
        st.cal_mean[slots], st.cal_var[slots], b.smoothed - st.cal_mean[slots], cal_alpha
    )
    quiet = st.quiet[slots]
    st.quiet[slots] = np.where(
        (quiet == 0) & (b.score >= cfg.cooldown_threshold),
        cfg.alert_cooldown,
        np.maximum(quiet - 1, 0),
    )
    first = (n == 0)[:, None]
    st.seen_min[slots] = np.where(first, values, np.minimum(st.seen_min[slots], values))
    st.seen_max[slots] = np.where(first, values, np.maximum(st.seen_max[slots], values))
    # critic statistics: exponentially weighted, winsorised, slower for anomalies
    cn = st.warm_n[slots]
    if b.fm is not None:  # forecast statistics: one-step errors of network and persistence
        # from the stream's `min_history`-th value on, as its scores: before, the
        # normaliser's scale is still settling and errors in its units are inflated (the
        # very first, against an empty state, is ~1e24 for a stream near 1000)
        start = max(cfg.min_history, 2)
        counted = np.minimum(cn, np.maximum(n - start, 0))
        a_f = (ew_alpha(counted, cfg.score_halflife) * weight * (n >= start))[:, None]
        # capped so the float32 averages stay finite (a jump from 1e-30 to 1e30 is ~1e84 sd^2)
        e_model = np.minimum((xn - b.fm) ** 2, ERROR_CAP)
        e_last = np.minimum(((values - st.last[slots]) / std) ** 2, ERROR_CAP)
        st.err_model[slots] += a_f * (e_model - st.err_model[slots])
        st.err_last[slots] += a_f * (e_last - st.err_last[slots])
    alpha_c = ew_alpha(cn, cfg.score_halflife) * weight
    c_mean, c_var = (
        st.critic_mean[slots].astype(np.float64),
        st.critic_var[slots].astype(np.float64),
    )
    c_sd = np.sqrt(np.maximum(c_var, 1e-4))
    dc = b.comps[:, 2] - c_mean
    dc = np.where(cn >= 10, np.clip(dc, -10 * c_sd, 10 * c_sd), dc)
    st.critic_mean[slots], st.critic_var[slots] = ew_moments(c_mean, c_var, dc, alpha_c)
    # normaliser: level follows fully, scale from a winsorised deviation
    alpha = ew_alpha(n, cfg.normaliser_halflife)[:, None]
    d = values - mean
    d_w = np.where((n >= 2)[:, None], np.clip(d, -4 * std, 4 * std), d)
    # a level shift: after `relevel_after` values in a row beyond 4 sd on the same side,
    # jump the level to the current value instead of creeping towards it
    side = np.sign(d) * (np.abs(d) > 4 * std) * (n >= 2)[:, None]
    run = st.outside[slots].astype(np.int64)
    run = np.where(side == 0, 0, np.where(side * run > 0, run + side, side))
    relevel = np.abs(run) >= cfg.relevel_after
    st.outside[slots] = np.where(relevel, 0, run)
    st.norm_mean[slots] = np.where(relevel, values, mean + alpha * d)
    st.norm_var[slots] = (1 - alpha) * (var + alpha * d_w**2)
    if b.fm is not None:
        # keep the forecast errors in units of the *current* scale, as if every past error
        # had been measured with it (the blend's band is std * sqrt(err)); measured with
        # the scale of their time, a stream's early errors would stay inflated for ~1000
        # events while its scale settles
        ratio = (std / robust_std(st.norm_mean[slots], st.norm_var[slots])) ** 2
        st.err_model[slots] *= ratio
        st.err_last[slots] *= ratio
    st.warm_n[slots] = cn + 1
    # long- and short-run levels of the `level` signal (plain EW statistics, like the
    # normaliser's but neither winsorised nor re-levelled, so a shift stays visible), held
    # past the channel's reference
    lvl_weight = held(cal_weight, n, cfg.reference_events)
    st.lvl_mean[slots], st.lvl_var[slots] = ew_moments(
        st.lvl_mean[slots],
        st.lvl_var[slots],
        values - st.lvl_mean[slots],
        (ew_alpha(n, cfg.normaliser_halflife) * lvl_weight)[:, None],
    )
    st.lvl_short[slots] = b.short
    if cfg.season_window:
        st.season_buf[slots, n % cfg.season_window] = values
        for row in np.flatnonzero(season_search_due(n + 1, cfg.season_window)):
            ring = st.season_values(slots[row], n[row] + 1)
            st.period[slots[row]] = [
                find_season(ring[:, f], cfg.season_min_correlation) for f in range(ring.shape[1])
            ]
    st.last[slots] = values
    st.n[slots] = n + 1
    if b.h is not None:
        st.h[slots] = b.h
        st.f_mean[slots] = b.f_mean
        st.f_scale[slots] = b.f_scale
