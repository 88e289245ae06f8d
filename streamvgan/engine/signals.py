"""The anomaly score of a batch of events: the model signal, the jump and level signals,
their calibration, the new-extreme rule and the alert cooldown.

README "How the score is computed" is the one description of the recipe; this module is its
implementation, step by step in :meth:`SignalScorer.compute`. Nothing here changes state: the
result, a :class:`ScoreBatch` of arrays, is what :func:`streamvgan.engine.learn.learn` then
folds into the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from streamvgan.engine.config import SIGNALS, EngineConfig
from streamvgan.engine.state import StateTable
from streamvgan.engine.stats import ew_alpha, robust_std
from streamvgan.engine.types import CAUSES
from streamvgan.nn.model import RecurrentVAEGAN, WindowCritic

#: the components of a score, in the order of :attr:`ScoreBatch.comps`'s columns
COMPONENTS = ("surprise", "reconstruction", "critic", "jump", "level")
SIGNAL_WARMUP = 10  # events before the jump and level signals are computed
CAL_SD_FLOOR = 0.05  # calibration sd floor (see SignalScorer.compute)
SIGNAL_CAP = 1e30  # largest magnitude a detection signal is kept at (float32 ring)
_SQRT1_2 = math.sqrt(0.5)
NO_CAUSE = -1  # ScoreBatch.cause where no signal is counted yet
EXTREME = CAUSES.index("extreme")
assert CAUSES[: len(SIGNALS)] == SIGNALS  # a signal's index is its cause code


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Phi(z), the standard normal distribution function, elementwise in float64."""
    return torch.special.ndtr(torch.from_numpy(np.asarray(z, dtype=np.float64))).numpy()


def normal_quantile(p: float) -> float:
    """Phi^-1(p), the standard normal quantile function."""
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


Z_TAIL = normal_quantile(0.9995)  # 2 * Phi(z) - 1 = 0.999 here


def calibrated_score(z: np.ndarray) -> np.ndarray:
    """``max(0, 2 Phi(z) - 1)`` up to 0.999; above, ``0.999 + 0.001 (1 - 1 / (1 + ln(1 + z -
    z_0.999)))``, which keeps growing with z instead of rounding to exactly 1.0 in float64
    (z > 8.3), so the most extreme points stay ranked above merely rare ones.

    >>> calibrated_score(np.array([-1.0, 0.0, 1.0, 3.2905, 9.0, 40.0])).round(5).tolist()
    [0.0, 0.0, 0.68269, 0.999, 0.99966, 0.99978]
    """
    z = np.asarray(z, dtype=np.float64)
    body = np.minimum(np.maximum(2.0 * normal_cdf(z) - 1.0, 0.0), 1.0)
    beyond = z > Z_TAIL
    if not beyond.any():  # the usual case: no tail to compute
        return body
    tail = 0.999 + 0.001 * (1.0 - 1.0 / (1.0 + np.log1p(np.maximum(z - Z_TAIL, 0.0))))
    return np.where(beyond, tail, body)


#: the new-extreme rule's scores lie between ``1 - EXTREME_SPAN / (1 + ln 2)`` and 1.0, above
#: every calibrated score (which stays below ``1 - 1.4e-6`` for every finite z)
EXTREME_SPAN = 1e-6
#: the lowest score of a new extreme (just past the tolerance): 0.9999994
EXTREME_FLOOR = 1.0 - EXTREME_SPAN / (1.0 + math.log(2.0))


def extreme_score(beyond: np.ndarray, tolerance: float) -> np.ndarray:
    """The score of a new extreme ``beyond`` the range of everything seen, in units of that
    range (more than ``tolerance``): ``1 - 1e-6 / (1 + ln(1 + beyond / tolerance))``. Just past
    the tolerance it is 0.9999994; it grows towards 1.0 the further beyond, so a larger
    excursion ranks above a smaller one, as the calibrated score keeps growing with z; 1.0 where
    the range seen is a single value (``beyond`` infinite) or the tolerance is 0.

    >>> extreme_score(np.array([0.05, 0.5, 10.0, np.inf]), 0.05).round(9).tolist()
    [0.999999409, 0.999999706, 0.999999841, 1.0]
    """
    beyond = np.asarray(beyond, dtype=np.float64)
    ratio = beyond / tolerance if tolerance > 0 else np.full(beyond.shape, np.inf)
    return 1.0 - EXTREME_SPAN / (1.0 + np.log1p(ratio))


def model_signal_weights(cfg: EngineConfig, with_critic: bool) -> tuple[float, float, float]:
    """The weights of surprise, reconstruction and the standardised critic in the model signal
    (README "How the score is computed", step 1); ``with_critic``: a fitted critic scored.

    ``model_signal="predictive"`` keeps the surprise alone, the error of the forecast made
    before ``x_t`` arrived: the reconstruction comes from a posterior that has already seen
    ``x_t``, and the critic judges a window that ends with it.

    >>> with_critic = EngineConfig(critic_weight=0.25)
    >>> model_signal_weights(with_critic, True), model_signal_weights(with_critic, False)
    ((1.0, 1.0, 0.25), (1.0, 1.0, 0.0))
    >>> model_signal_weights(EngineConfig(), True)  # the default: the critic is not scored
    (1.0, 1.0, 0.0)
    >>> model_signal_weights(EngineConfig(model_signal="predictive"), True)
    (1.0, 0.0, 0.0)
    """
    if cfg.model_signal == "predictive":
        return cfg.surprise_weight, 0.0, 0.0
    return cfg.surprise_weight, cfg.reconstruction_weight, cfg.critic_weight * with_critic


@dataclass
class ScoreBatch:
    """Everything about B events (one row each, at channels ``slots``) that scoring computes
    and learning needs; arrays in float64 unless said otherwise."""

    slots: np.ndarray  # (B,) int64 channel slots
    values: np.ndarray  # (B, F) the events' values, original units
    n: np.ndarray  # (B,) events the channel had learned before this one
    mean: np.ndarray  # (B, F) the normaliser's mean and variance before this event
    var: np.ndarray
    std: np.ndarray  # (B, F) robust sd from them
    xn: np.ndarray  # (B, F) normalised, clipped value
    comps: np.ndarray  # (B, 5) COMPONENTS
    raw: np.ndarray  # (B,) the model signal
    signals: np.ndarray  # (B, K) model signal, jump per field, level per field
    short: np.ndarray  # (B, F) short-run level after this event
    smoothed: np.ndarray  # (B, K) each signal averaged over its last `smoothing` values
    z: np.ndarray  # (B, K) calibrated z of each signal
    likely: np.ndarray  # (B,) score before the cooldown (decides the learning weight)
    score: np.ndarray  # (B,) the score
    cause: np.ndarray  # (B,) int8 index into CAUSES of what drove the score (NO_CAUSE: none)
    cause_field: np.ndarray  # (B,) int64 column of the field behind it (-1 with NO_CAUSE)
    field_scores: np.ndarray  # (B, F) each field's score, as ``score`` (see field_scores())
    warm: bool  # scored by a fitted network (False: the cold-start fallback)
    fm: np.ndarray | None  # (B, F) the network's forecast of x_t (None when cold)
    h: np.ndarray | None  # (B, hidden) float32 network state after this event (None when cold)
    f_mean: np.ndarray | None  # (B, H, F) float32 forecast made after this event
    f_scale: np.ndarray | None


def field_scores(
    z: np.ndarray,
    model_field: np.ndarray,
    young: np.ndarray,
    extreme_field: np.ndarray,
    extremes: np.ndarray,
    quiet: np.ndarray,
    cfg: EngineConfig,
) -> np.ndarray:
    """The score of each field of B events of F > 1 fields (one row each, ``field_mode=
    "joint"``): ``calibrated_score`` of the largest calibrated z among that field's own
    signals, its jump and its level (``z`` (B, 1 + 2F) as :attr:`ScoreBatch.z`), where the
    joint model signal belongs to ``model_field`` (B,), the field with the largest normalised
    error, as its cause does; the rule's score ``extremes`` (B,) for the field at
    ``extreme_field`` (B,) where the new-extreme rule fired (-1: not); 0 for ``young`` (B,)
    rows; capped as the score under the cooldown (``quiet`` (B,)). Each column of ``z``
    belongs to exactly one field and ``calibrated_score`` does not decrease, so the event's
    score is the largest of its fields' (and the field named by the cause has exactly the
    event's score).

    >>> z = np.array([[2.0, 0.5, -1.0, 1.0, 3.0], [-np.inf, -np.inf, -np.inf, -np.inf, -np.inf]])
    >>> scores = field_scores(z, np.array([0, 1]), np.array([False, False]), np.array([-1, 0]),
    ...                       np.array([0.0, 1.0]), np.array([False, False]), EngineConfig())
    >>> scores.round(4).tolist()  # a: model 2.0 (its field), jump 0.5, level 1.0; b: level 3.0
    [[0.9545, 0.9973], [1.0, 0.0]]
    """
    f = (z.shape[1] - 1) // 2
    rows = np.arange(len(z))
    zf = np.maximum(z[:, 1 : 1 + f], z[:, 1 + f :])  # (B, F) jump and level of each field
    zf[rows, model_field] = np.maximum(zf[rows, model_field], z[:, 0])
    out = calibrated_score(zf)
    out[young] = 0.0
    fired = extreme_field >= 0
    out[rows[fired], extreme_field[fired]] = extremes[fired]
    return np.where(quiet[:, None], np.minimum(out, cfg.cooldown_cap), out)


class SignalScorer:
    """Computes :class:`ScoreBatch` es for one engine configuration (see the module
    docstring)."""

    def __init__(self, config: EngineConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        f = config.model.n_features
        # columns of the signal arrays: the model's raw score, then jump and level per field
        self.signal_col = np.array([0] + [1] * f + [2] * f)  # index into SIGNALS
        self.signal_on = np.isin(self.signal_col, [SIGNALS.index(s) for s in config.signals])
        # calibration sd floor: absolute for a model signal in predicted-scale units, relative
        # to the signal's mean for those in the stream's own units
        self.absolute_floor = (self.signal_col == 0) & (config.model_signal != "forecast_error")

    def compute(
        self,
        st: StateTable,
        slots: np.ndarray,
        values: np.ndarray,
        model: RecurrentVAEGAN | None,
        critic: WindowCritic | None,
    ) -> ScoreBatch:
        """Score ``values`` (B, F) at channels ``slots`` as their next events; ``model`` is
        None before the first fit (the cold-start fallback)."""
        cfg = self.config
        n = st.n[slots]
        mean, var = st.norm_mean[slots], st.norm_var[slots]
        std = robust_std(mean, var)
        xn = np.clip((values - mean) / std, -cfg.clip, cfg.clip)
        xn[n < 2] = 0.0
        warm = model is not None

        # 1. the model signal, in normalised units
        comps = np.zeros((len(slots), len(COMPONENTS)), dtype=np.float64)
        fm = h = f_mean = f_scale = None
        if model is not None:
            fm, fs = st.f_mean[slots, 0], st.f_scale[slots, 0]  # (B, F) forecast of x_t
            fs = np.maximum(fs, cfg.model.min_scale)  # a channel new since the last fit has none
            errors = np.abs(xn - fm) / fs  # (B, F) per field: the model's cause field
            comps[:, 0] = errors.sum(-1)
            x_t = torch.from_numpy(xn.astype(np.float32)).to(self.device)
            h_t = torch.from_numpy(st.h[slots]).to(self.device)
            out = model.step(x_t, h_t)
            comps[:, 1] = out.recon_error.cpu().numpy()
            h = out.h.cpu().numpy()
            f_mean, f_scale = out.forecast_mean.cpu().numpy(), out.forecast_scale.cpu().numpy()
            if critic is not None:
                wc = cfg.model.critic_window
                window = np.empty((len(slots), wc, xn.shape[1]), dtype=np.float32)
                window[:, :-1] = st.recent_values(slots, wc - 1)  # float32 all the way
                window[:, -1] = xn
                with torch.no_grad():
                    d = critic(torch.from_numpy(window).to(self.device))
                comps[:, 2] = -d.cpu().numpy()
        else:
            prev = st.recent_values(slots, 1)[:, 0]
            errors = np.abs(xn)
            comps[:, 0] = errors.sum(-1)
            comps[:, 1] = np.abs(xn - prev).sum(-1) * (n >= 3)

        # surprise and reconstruction are already in units of the model's predicted scale; the
        # critic's output has no natural unit, so it is standardised by its running statistics
        c_mean, c_var = (
            st.critic_mean[slots].astype(np.float64),
            st.critic_var[slots].astype(np.float64),
        )
        critic_z = np.clip((comps[:, 2] - c_mean) / np.sqrt(np.maximum(c_var, 1e-4)), -5.0, 20.0)
        critic_z[st.warm_n[slots] < 10] = 0.0  # weighted 0 anyway when cold or criticless
        if cfg.model_signal == "forecast_error":
            # the forecast's error in the stream's own units, measured as the jump measures
            # the last value's; until the first fit, the last value's error itself
            predicted = mean + fm * std if fm is not None else st.last[slots]
            errors = np.abs(values - predicted)  # (B, F) per field: the cause field
            raw = np.where(n >= SIGNAL_WARMUP, errors.sum(-1), 0.0)
        else:
            surprise_w, recon_w, critic_w = model_signal_weights(cfg, warm and critic is not None)
            raw = (surprise_w * comps[:, 0] + recon_w * comps[:, 1] + critic_w * critic_z) / (
                surprise_w + recon_w + critic_w
            )

        # 2. and 3. two model-free signals beside it, per field, in the stream's own units: the
        # jump |x_t - x_{t-1}|, and the level shift |short-run level - long-run level| / long-run
        # sd
        lvl_mean = st.lvl_mean[slots]
        lvl_sd = robust_std(lvl_mean, st.lvl_var[slots])
        settled = (n >= SIGNAL_WARMUP)[:, None]
        before = st.last[slots]
        jump = np.abs(values - before)
        if cfg.season_window:
            jump = self._seasonal_jump(st, slots, values, n, jump)
        jump = np.where(settled, jump, 0.0)
        a_short = ew_alpha(n, cfg.level_halflife)[:, None]
        short = st.lvl_short[slots] + a_short * (values - st.lvl_short[slots])
        level = np.where(settled, np.abs(short - lvl_mean) / lvl_sd, 0.0)
        # bounded so the float32 ring of recent signals stays finite: a level shift of 1e41
        # sd (a stream at 1e-30 that jumps to 1e30) is as certain an anomaly as one of 1e30
        signals = np.clip(
            np.concatenate([raw[:, None], jump, level], axis=1), -SIGNAL_CAP, SIGNAL_CAP
        )
        comps[:, 3] = jump.max(-1)
        comps[:, 4] = signals[:, 1 + jump.shape[1] :].max(-1)

        # 4. calibration (anomaly likelihood), per signal: its smoothed value against its own
        # exponentially weighted mean and sd for this channel; the score takes the largest
        size = st.sizes["S"]
        recent = st.recent[slots].astype(np.float64)  # (B, S, K)
        cal_n = st.cal_n[slots]  # (B, K)
        age = (n[:, None] - np.arange(size)[None, :] - 1) % size + 1  # 1 = written last event
        unwritten = age[:, :, None] > np.minimum(cal_n, size)[:, None, :]  # since a restart
        recent[unwritten] = np.nan
        recent[np.arange(len(slots)), n % size] = signals
        # np.nanmean(recent, axis=1), in a third of the calls: NaN counts as missing
        counted = ~np.isnan(recent)
        smoothed = np.where(counted, recent, 0.0).sum(axis=1) / counted.sum(axis=1)  # (B, K)
        mu, sd = st.cal_mean[slots], np.sqrt(st.cal_var[slots])
        # sd floor: absolute for the model's score in predicted-scale units, relative to the
        # signal's mean for the jump and level (and a model signal in the stream's own units)
        floor = np.where(self.absolute_floor, CAL_SD_FLOOR, CAL_SD_FLOOR * np.abs(mu)) + 1e-12
        z = (smoothed - mu) / np.maximum(sd, floor)
        z[:, self.signal_col == 0] *= cfg.model_signal_weight
        z[(cal_n < 2 * size) | ~self.signal_on[None, :]] = -np.inf
        z_max = z.max(-1)
        score = calibrated_score(z_max)
        young = n < max(cfg.min_history, 2)
        score[young] = 0.0
        # the cause: the signal (and field) of the largest z; for the model signal, the field
        # with the largest normalised error
        top = z.argmax(-1)
        f = values.shape[1]
        live = (z_max > -np.inf) & ~young
        cause = np.where(live, self.signal_col[top], NO_CAUSE).astype(np.int8)
        cause_field = np.where(top == 0, errors.argmax(-1), (top - 1) % f)
        # 5. a new extreme: beyond the range of everything seen by a fraction of that range
        extreme_field = np.full(len(slots), -1)  # where the rule fired, the field (else -1)
        if cfg.range_tolerance is not None:
            lo, hi = st.seen_min[slots], st.seen_max[slots]
            margin = cfg.range_tolerance * (hi - lo)
            outside = (values > hi + margin) | (values < lo - margin)
            extreme = outside.any(-1) & ~young
            if extreme.any():  # the field furthest beyond its range, in units of that range
                with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # range 0
                    beyond = np.maximum(values - hi, lo - values) / (hi - lo)
                beyond = np.where(outside, beyond, -np.inf)
                score[extreme] = extreme_score(beyond.max(-1)[extreme], cfg.range_tolerance)
                cause[extreme] = EXTREME
                extreme_field = np.where(extreme, beyond.argmax(-1), -1)
                cause_field = np.where(extreme, extreme_field, cause_field)
        cause_field = np.where(cause == NO_CAUSE, -1, cause_field)
        likely = score  # before the cooldown: decides the learning weight
        # 6. the alert cooldown
        quiet = st.quiet[slots] > 0
        score = np.where(quiet, np.minimum(score, cfg.cooldown_cap), score)
        if f == 1:  # one field: its score is the row's (a channel, or a one-field stream)
            per_field = score[:, None]
        else:
            per_field = field_scores(z, errors.argmax(-1), young, extreme_field, likely, quiet, cfg)
        return ScoreBatch(
            slots=slots,
            values=values,
            n=n,
            mean=mean,
            var=var,
            std=std,
            xn=xn,
            comps=comps,
            raw=raw,
            signals=signals,
            short=short,
            smoothed=smoothed,
            z=z,
            likely=likely,
            score=score,
            cause=cause,
            cause_field=cause_field,
            field_scores=per_field,
            warm=warm,
            fm=fm,
            h=h,
            f_mean=f_mean,
            f_scale=f_scale,
        )

    def _seasonal_jump(
        self, st: StateTable, slots: np.ndarray, values: np.ndarray, n: np.ndarray, jump
    ) -> np.ndarray:
        """With a season of P events found, the jump is from the same moment one season back,
        or two if that is closer (so an anomaly does not echo one season later)."""
        window = self.config.season_window
        period = st.period[slots]  # (B, F)
        seasonal = (period > 0) & (n[:, None] >= period)
        if not seasonal.any():
            return jump
        ring = st.season_buf[slots]
        back = []
        for k in (1, 2):
            pos = (n[:, None] - k * period) % window
            lagged = np.take_along_axis(ring, pos[:, None, :], axis=1)[:, 0]
            ok = seasonal & (n[:, None] >= k * period)
            back.append(np.where(ok, np.abs(values - lagged), np.inf))
        return np.where(seasonal, np.minimum(back[0], back[1]), jump)
