"""The score and the learning step for one channel of one value (one univariate stream per
call, the River adapters' case), in Python floats instead of one-element numpy arrays.

Each numpy call costs about a microsecond whatever the array's size, and the vectorised
:meth:`~streamvgan.engine.signals.SignalScorer.compute` and
:func:`~streamvgan.engine.learn.learn` make a few hundred: at one event per call they cost
three times the network step. This module is the same recipe, line for line, for B = 1 and
F = 1: the same operations in the same order on the same float64 values, the same float32
roundings where the state is float32, and the network called exactly as there.
``tests/engine/test_scalar.py`` holds the two paths equal event by event; change both or
neither.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from streamvgan.engine.config import EngineConfig
from streamvgan.engine.learn import ERROR_CAP
from streamvgan.engine.signals import (
    CAL_SD_FLOOR,
    EXTREME,
    EXTREME_SPAN,
    NO_CAUSE,
    SIGNAL_CAP,
    SIGNAL_WARMUP,
    Z_TAIL,
    ScoreBatch,
    model_signal_weights,
)
from streamvgan.engine.state import StateTable
from streamvgan.engine.stats import find_season, season_search_due_one
from streamvgan.nn.model import RecurrentVAEGAN, WindowCritic

_LN2 = math.log(2.0)
_SQRT1_2 = math.sqrt(0.5)
_F32 = np.float32


def _cap(x: float, cap: float) -> float:
    """``x`` within +-``cap`` (NaN stays NaN), as ``np.clip`` gives."""
    return min(max(x, -cap), cap)


def _f32(x: float) -> float:
    """``x`` rounded to float32, as storing it in a float32 array does."""
    return float(_F32(x))


def _alpha(count: float, halflife: float) -> float:
    return max(1.0 / (count + 1.0), _LN2 / halflife)


def _std(mean: float, var: float) -> float:
    floor = 1e-4 * abs(mean) + 1e-12
    return math.sqrt(max(var, floor * floor))


def _extreme(beyond: float, tolerance: float) -> float:
    """:func:`~streamvgan.engine.signals.extreme_score` of one value."""
    ratio = beyond / tolerance if tolerance > 0 else math.inf
    return 1.0 - EXTREME_SPAN / (1.0 + math.log1p(ratio))


def _calibrated(z: float) -> float:
    if z > Z_TAIL:
        return 0.999 + 0.001 * (1.0 - 1.0 / (1.0 + math.log1p(max(z - Z_TAIL, 0.0))))
    cdf = 0.5 * math.erfc(-z * _SQRT1_2)
    return min(max(2.0 * cdf - 1.0, 0.0), 1.0)


def compute_one(
    cfg: EngineConfig,
    st: StateTable,
    slot: int,
    value: float,
    model: RecurrentVAEGAN | None,
    critic: WindowCritic | None,
    signal_on: list[bool],
    device: torch.device,
) -> ScoreBatch:
    """:meth:`SignalScorer.compute` for one channel ``slot`` of one value."""
    s = slot
    n = st.n.item(s)
    mean, var = st.norm_mean.item(s, 0), st.norm_var.item(s, 0)
    std = _std(mean, var)
    clip = cfg.clip
    xn = min(max((value - mean) / std, -clip), clip) if n >= 2 else 0.0
    warm = model is not None

    # 1. the model signal
    surprise = recon = critic_out = 0.0
    fm = h = f_mean = f_scale = None
    if model is not None:
        fm = st.f_mean.item(s, 0, 0)
        # np.maximum(float32, python float) stays float32: the floor is float32(min_scale)
        fs = max(st.f_scale.item(s, 0, 0), _f32(cfg.model.min_scale))
        surprise = abs(xn - fm) / fs
        x32 = np.array([[xn]], dtype=np.float32)
        h_prev = torch.from_numpy(st.h[s : s + 1]).to(device)
        out = model.step(torch.from_numpy(x32).to(device), h_prev)
        recon = out.recon_error.item()
        h = out.h.cpu().numpy()
        f_mean, f_scale = out.forecast_mean.cpu().numpy(), out.forecast_scale.cpu().numpy()
        if critic is not None:
            wc, size = cfg.model.critic_window, st.sizes["R"]
            window = np.zeros((1, wc, 1), dtype=np.float32)  # the last wc - 1 values and x_t
            start = (n - wc + 1) % size
            if n >= wc - 1 and start + wc - 1 <= size:  # one slice of the ring, no gather
                window[0, :-1] = st.buf[s, start : start + wc - 1]
            else:
                window[0, :-1] = st.recent_values(np.array([s]), wc - 1)[0]
            window[0, -1, 0] = x32[0, 0]
            with torch.no_grad():
                critic_out = -critic(torch.from_numpy(window).to(device)).item()
    else:
        prev = st.buf.item(s, (n - 1) % st.sizes["R"], 0) if n >= 1 else 0.0
        surprise = abs(xn)
        recon = abs(xn - prev) * (n >= 3)

    c_mean, c_var = st.critic_mean.item(s), st.critic_var.item(s)
    critic_z = min(max((critic_out - c_mean) / math.sqrt(max(c_var, 1e-4)), -5.0), 20.0)
    if st.warm_n.item(s) < 10:
        critic_z = 0.0
    in_units = cfg.model_signal == "forecast_error"
    if in_units:  # the forecast's error in the stream's own units, as signals.py
        predicted = mean + fm * std if fm is not None else st.last.item(s, 0)
        raw = abs(value - predicted) if n >= SIGNAL_WARMUP else 0.0
    else:
        surprise_w, recon_w, critic_w = model_signal_weights(cfg, warm and critic is not None)
        raw = (surprise_w * surprise + recon_w * recon + critic_w * critic_z) / (
            surprise_w + recon_w + critic_w
        )

    # 2. and 3. the jump and the level shift
    lvl_mean = st.lvl_mean.item(s, 0)
    lvl_sd = _std(lvl_mean, st.lvl_var.item(s, 0))
    settled = n >= SIGNAL_WARMUP
    jump = abs(value - st.last.item(s, 0))
    if cfg.season_window:
        period = st.period.item(s, 0)
        if period > 0 and n >= period:
            back = []
            for k in (1, 2):
                lagged = st.season_buf.item(s, (n - k * period) % cfg.season_window, 0)
                back.append(abs(value - lagged) if n >= k * period else math.inf)
            jump = min(back[0], back[1])
    if not settled:
        jump = 0.0
    lvl_short = st.lvl_short.item(s, 0)
    short = lvl_short + _alpha(n, cfg.level_halflife) * (value - lvl_short)
    level = abs(short - lvl_mean) / lvl_sd if settled else 0.0
    # capped as signals.py caps them, so the float32 ring stays finite
    level = _cap(level, SIGNAL_CAP)
    signals = (_cap(raw, SIGNAL_CAP), _cap(jump, SIGNAL_CAP), level)

    # 4. calibration: each signal's mean over its last `smoothing` values (those written
    # since its calibration last restarted) against its EW mean and sd
    size = st.sizes["S"]
    recent = st.recent[s].tolist()  # (S, K) float32 values
    recent[n % size] = list(signals)
    cal_n = st.cal_n[s].tolist()
    z = []
    for k in range(3):
        kept = min(cal_n[k], size)
        total, count = 0.0, 0
        for j in range(size):
            age = (n - j - 1) % size + 1
            x = recent[j][k]
            if (j == n % size or age <= kept) and x == x:  # NaN is skipped, as nanmean does
                total = x if count == 0 else total + x
                count += 1
        smoothed_k = total / count if count else math.nan  # all NaN: nanmean says NaN
        mu, sd = st.cal_mean.item(s, k), math.sqrt(st.cal_var.item(s, k))
        floor = (CAL_SD_FLOOR if k == 0 and not in_units else CAL_SD_FLOOR * abs(mu)) + 1e-12
        zk = (smoothed_k - mu) / max(sd, floor)
        if k == 0:
            zk *= cfg.model_signal_weight
        if cal_n[k] < 2 * size or not signal_on[k]:
            zk = -math.inf
        z.append((zk, smoothed_k))
    z_max = max(z[0][0], z[1][0], z[2][0])
    score = _calibrated(z_max)
    young = n < max(cfg.min_history, 2)
    if young:
        score = 0.0
    # the cause: the first signal of the largest z (np.argmax's choice), in the one field
    live = z_max > -math.inf and not young
    cause = [z[0][0], z[1][0], z[2][0]].index(z_max) if live else NO_CAUSE
    # 5. a new extreme
    if cfg.range_tolerance is not None and not young:
        lo, hi = st.seen_min.item(s, 0), st.seen_max.item(s, 0)
        margin = cfg.range_tolerance * (hi - lo)
        if value > hi + margin or value < lo - margin:
            beyond = max(value - hi, lo - value) / (hi - lo) if hi > lo else math.inf
            score = _extreme(beyond, cfg.range_tolerance)
            cause = EXTREME
    likely = score
    # 6. the alert cooldown
    if st.quiet.item(s) > 0:
        score = min(score, cfg.cooldown_cap)

    def col(x: float) -> np.ndarray:
        return np.array([[x]])

    return ScoreBatch(
        slots=np.array([s], dtype=np.int64),
        values=col(value),
        n=np.array([n], dtype=np.int64),
        mean=col(mean),
        var=col(var),
        std=col(std),
        xn=col(xn),
        comps=np.array([[surprise, recon, critic_out, jump, level]]),
        raw=np.array([raw]),
        signals=np.array([signals]),
        short=col(short),
        smoothed=np.array([[z[0][1], z[1][1], z[2][1]]]),
        z=np.array([[z[0][0], z[1][0], z[2][0]]]),
        likely=np.array([likely]),
        score=np.array([score]),
        cause=np.array([cause], dtype=np.int8),
        cause_field=np.array([0 if cause != NO_CAUSE else -1]),
        field_scores=np.array([[score]]),  # the one field's score is the event's
        warm=warm,
        fm=None if fm is None else col(fm),
        h=h,
        f_mean=f_mean,
        f_scale=f_scale,
    )


def learn_one(cfg: EngineConfig, st: StateTable, b: ScoreBatch) -> bool:
    """:func:`~streamvgan.engine.learn.learn` for a batch from :func:`compute_one`; return
    whether the row is finite afterwards (the engine's guard,
    :meth:`~streamvgan.engine.state.StateTable.reset_nonfinite`, in Python floats for the
    one row: every array of :data:`~streamvgan.engine.learn.STEP_ARRAYS`, read back)."""
    s = int(b.slots[0])
    n, value = int(b.n[0]), b.values.item(0, 0)
    mean, var, std, xn = b.mean.item(0, 0), b.var.item(0, 0), b.std.item(0, 0), b.xn.item(0, 0)
    likely, score = b.likely.item(0), b.score.item(0)
    anomalous = likely >= cfg.downweight_threshold
    weight = cfg.anomalous_weight if anomalous else 1.0
    cal_weight = cfg.anomalous_calibration_weight if anomalous else 1.0
    pos = n % st.sizes["R"]
    st.buf[s, pos, 0] = xn
    st.buf_w[s, pos] = weight
    st.recent[s, n % st.sizes["S"]] = b.signals[0]
    # calibration statistics, the alert cooldown and the range of values seen
    smoothed = b.smoothed[0].tolist()
    for k in range(3):
        cal_n = st.cal_n.item(s, k)
        st.cal_n[s, k] = cal_n + 1
        c_mu, c_var = st.cal_mean.item(s, k), st.cal_var.item(s, k)
        d = smoothed[k] - c_mu
        a = _alpha(cal_n, cfg.calibration_halflife) * cal_weight
        if cfg.reference_events and cal_n >= cfg.reference_events:
            a = 0.0
        st.cal_mean[s, k] = c_mu + a * d
        st.cal_var[s, k] = (1 - a) * (c_var + a * (d * d))
    quiet = st.quiet.item(s)
    if quiet == 0 and score >= cfg.cooldown_threshold:
        st.quiet[s] = cfg.alert_cooldown
    else:
        st.quiet[s] = max(quiet - 1, 0)
    if n == 0:
        st.seen_min[s, 0] = st.seen_max[s, 0] = value
    else:
        st.seen_min[s, 0] = min(st.seen_min.item(s, 0), value)
        st.seen_max[s, 0] = max(st.seen_max.item(s, 0), value)
    cn = st.warm_n.item(s)
    err_model = err_last = 0.0
    if b.fm is not None:  # forecast statistics: one-step errors of network and persistence
        start = max(cfg.min_history, 2)
        counted = min(cn, max(n - start, 0))
        a_f = _alpha(counted, cfg.score_halflife) * weight * (n >= start)
        e_model = (xn - b.fm.item(0, 0)) * (xn - b.fm.item(0, 0))  # numpy's x**2 is x*x
        e_last = ((value - st.last.item(s, 0)) / std) * ((value - st.last.item(s, 0)) / std)
        e_model, e_last = min(e_model, ERROR_CAP), min(e_last, ERROR_CAP)  # as learn.py
        err_model, err_last = st.err_model.item(s, 0), st.err_last.item(s, 0)
        err_model = _f32(err_model + a_f * (e_model - err_model))
        err_last = _f32(err_last + a_f * (e_last - err_last))
    alpha_c = _alpha(cn, cfg.score_halflife) * weight
    c_mean, c_var = st.critic_mean.item(s), st.critic_var.item(s)
    c_sd = math.sqrt(max(c_var, 1e-4))
    dc = b.comps.item(0, 2) - c_mean
    if cn >= 10:
        dc = min(max(dc, -10 * c_sd), 10 * c_sd)
    st.critic_mean[s] = c_mean + alpha_c * dc
    st.critic_var[s] = (1 - alpha_c) * (c_var + alpha_c * (dc * dc))
    # normaliser: level follows fully, scale from a winsorised deviation
    alpha = _alpha(n, cfg.normaliser_halflife)
    d = value - mean
    d_w = min(max(d, -4 * std), 4 * std) if n >= 2 else d
    beyond = abs(d) > 4 * std and n >= 2
    side = (1.0 if d > 0 else -1.0 if d < 0 else 0.0) if beyond else 0.0
    run = float(st.outside.item(s, 0))
    run = 0.0 if side == 0 else (run + side if side * run > 0 else side)
    relevel = abs(run) >= cfg.relevel_after
    st.outside[s, 0] = 0 if relevel else run
    new_mean = value if relevel else mean + alpha * d
    new_var = (1 - alpha) * (var + alpha * (d_w * d_w))
    st.norm_mean[s, 0], st.norm_var[s, 0] = new_mean, new_var
    if b.fm is not None:
        ratio = (std / _std(new_mean, new_var)) * (std / _std(new_mean, new_var))
        st.err_model[s, 0] = err_model * ratio
        st.err_last[s, 0] = err_last * ratio
    st.warm_n[s] = cn + 1
    lvl_mean, lvl_var = st.lvl_mean.item(s, 0), st.lvl_var.item(s, 0)
    d = value - lvl_mean
    a = _alpha(n, cfg.normaliser_halflife) * cal_weight
    if cfg.reference_events and n >= cfg.reference_events:
        a = 0.0
    st.lvl_mean[s, 0] = lvl_mean + a * d
    st.lvl_var[s, 0] = (1 - a) * (lvl_var + a * (d * d))
    st.lvl_short[s, 0] = b.short.item(0, 0)
    if cfg.season_window:
        st.season_buf[s, n % cfg.season_window, 0] = value
        if season_search_due_one(n + 1, cfg.season_window):
            ring = st.season_values(s, n + 1)
            st.period[s, 0] = find_season(ring[:, 0], cfg.season_min_correlation)
    st.last[s, 0] = value
    st.n[s] = n + 1
    # the row, read back from the arrays (a float32 array may round a large value to inf):
    # the sum is finite when every term is (inputs within 1e30, squares 1e60), and any NaN
    # or infinity makes it non-finite
    written = (
        xn + sum(map(sum, st.recent[s].tolist()))
        + sum(st.cal_mean[s].tolist()) + sum(st.cal_var[s].tolist())
        + st.critic_mean.item(s) + st.critic_var.item(s)
        + st.norm_mean.item(s, 0) + st.norm_var.item(s, 0)
        + st.err_model.item(s, 0) + st.err_last.item(s, 0)
        + st.lvl_mean.item(s, 0) + st.lvl_var.item(s, 0) + st.lvl_short.item(s, 0)
        + st.seen_min.item(s, 0) + st.seen_max.item(s, 0) + st.last.item(s, 0)
    )  # fmt: skip
    if b.h is not None and b.f_mean is not None and b.f_scale is not None:
        st.h[s] = b.h[0]
        st.f_mean[s] = b.f_mean[0]
        st.f_scale[s] = b.f_scale[0]
    outputs = np.concatenate((st.h[s], st.f_mean[s], st.f_scale[s]), axis=None)
    return math.isfinite(written) and bool(np.isfinite(outputs).all())
