"""StreamEngine: one recurrent VAE-GAN serving many streams online.

Every stream keeps its own small state (GRU state, online normaliser, replay buffer, score
statistics); all streams share one set of weights. :meth:`StreamEngine.process` advances every
stream that received events in one batched network call per *round* (the k-th event of each
stream in the batch), so the cost per event does not grow with Python-level calls per stream.

Anomaly score of an event (see README "How the score is computed"):

1. the model signal, in normalised units: ``surprise`` = |x_t - mu_{t|t-1}| / sigma_{t|t-1},
   the error of the forecast made at t-1 in units of its own predicted scale;
   ``reconstruction`` = |x_t - mean| / scale of p(x_t | E[z_t | x_t, h_{t-1}], h_{t-1});
   ``critic`` = -D(last window), standardised by its running mean and sd per stream (clipped
   to [-5, 20]); ``raw`` = (surprise + reconstruction + 0.25 critic') / 2.25. Before the
   first fit (cold start) ``surprise`` = |x_t| (distance from the running mean in running
   sds) and ``reconstruction`` = |x_t - x_{t-1}|, with no critic term;
2. two model-free signals per field, in the stream's own units: ``jump`` = |x_t - x_{t-1}|,
   or from one or two seasons back once a season of P events is found (``season_window`` > 0,
   see :func:`seasonal_period`), and
   ``level`` = |short-run level - long-run level| / long-run sd;
3. calibration of each signal as in Numenta's anomaly likelihood (Ahmad et al. 2017): ``m``
   = mean of its last ``smoothing`` values, ``mu, sd`` = exponentially weighted mean and sd
   of its past ``m`` (half-life ``calibration_halflife``), ``z = (m - mu) / sd``, the model's
   multiplied by ``model_signal_weight`` (0.6: calibrated as if normal it raised more false
   alarms on NAB than the other two, so it needs a z 1/0.6 times larger); the score is
   ``max(0, 2 Phi(max z) - 1)`` over the signals in ``signals``, the probability that a normal
   point is less extreme (above 0.999 a slowly growing tail instead, see
   :func:`calibrated_score`);
4. a value beyond the range of all values the stream has shown, by more than
   ``range_tolerance`` of that range, scores 1.0 (a new extreme);
5. if ``alert_cooldown`` > 0 (off by default), after a score of at least ``cooldown_threshold``
   the next ``alert_cooldown`` scores of the channel are capped at ``cooldown_cap``, so one
   incident raises one alert.

Points scoring at least ``downweight_threshold`` (before the cooldown) enter the replay buffer and
the statistics at ``anomalous_weight``.

Forecasts combine the network's forecast with the last value, weighted by the inverse of each
one's recent squared one-step error times the step ahead, and, where a season is known, with
the value one season back, weighted by its squared error over the season ring
(``forecast_blend``).
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import ndtr, ndtri

from streamvgan.engine import checkpoint
from streamvgan.engine.config import SIGNALS, EngineConfig
from streamvgan.engine.state import StateTable
from streamvgan.engine.training import FitReport, Trainer, TrainingWindows
from streamvgan.engine.types import Event, Forecast, Score
from streamvgan.engine.values import check_value
from streamvgan.errors import CheckpointError, ConfigurationError, InvalidInputError
from streamvgan.nn.model import ModelConfig, RecurrentVAEGAN
from streamvgan.nn.pretrained import load_pretrained, shipped_path

log = logging.getLogger(__name__)

COMPONENTS = ("surprise", "reconstruction", "critic", "jump", "level")
_SIGNAL_WARMUP = 10  # events before the jump and level signals are computed
_CAL_SD_FLOOR = 0.05  # calibration sd floor (see _compute)
_Z_TAIL = float(ndtri(0.9995))  # 2 * Phi(z) - 1 = 0.999 here
# the per-channel arrays one learning step writes, checked for NaN/inf after each step (the
# replay ring gets the step's normalised value, checked on its own; see _reset_nonfinite)
_STEP_ARRAYS = (
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


def calibrated_score(z: np.ndarray) -> np.ndarray:
    """``max(0, 2 Phi(z) - 1)`` up to 0.999; above, ``0.999 + 0.001 (1 - 1 / (1 + ln(1 + z -
    z_0.999)))``, which keeps growing with z instead of rounding to exactly 1.0 in float64
    (z > 8.3), so the most extreme points stay ranked above merely rare ones.

    >>> calibrated_score(np.array([-1.0, 0.0, 1.0, 3.2905, 9.0, 40.0])).round(5).tolist()
    [0.0, 0.0, 0.68269, 0.999, 0.99966, 0.99978]
    """
    z = np.asarray(z, dtype=np.float64)
    body = np.clip(2.0 * ndtr(z) - 1.0, 0.0, 1.0)
    tail = 0.999 + 0.001 * (1.0 - 1.0 / (1.0 + np.log1p(np.maximum(z - _Z_TAIL, 0.0))))
    return np.where(z > _Z_TAIL, tail, body)


_LN2 = math.log(2.0)


def _ew_alpha(count: np.ndarray, halflife: float) -> np.ndarray:
    """Weight of the newest value in an exponentially weighted statistic: the plain mean's
    1 / (count + 1) until that falls below the half-life's ln 2 / halflife."""
    return np.maximum(1.0 / (count + 1.0), _LN2 / halflife)


def _ew_moments(mean: np.ndarray, var: np.ndarray, d: np.ndarray, alpha: np.ndarray):
    """Exponentially weighted mean and variance after a value at deviation ``d`` from ``mean``."""
    return mean + alpha * d, (1 - alpha) * (var + alpha * d**2)


def _inverse_mse_blend(candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple:
    """Combine forecasts ``(mean, spread, mse)`` (arrays of one shape) with weights
    proportional to 1 / mse (an infinite mse weighs 0, a zero mse takes all the weight)."""
    mse = np.stack([np.maximum(c[2], 1e-12) for c in candidates])
    w = (1.0 / mse) / (1.0 / mse).sum(axis=0)
    mean = sum(wi * c[0] for wi, c in zip(w, candidates))
    spread = sum(wi * c[1] for wi, c in zip(w, candidates))
    return mean, spread


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


def _initial_weights(config: EngineConfig) -> tuple[EngineConfig, dict[str, torch.Tensor]]:
    """The configuration with the architecture of ``config.init``'s weights file, and the
    weights. Model settings left at their defaults take the file's; others must match it,
    except ``horizon``: the network forecasts its own horizon, and a caller that wants fewer
    steps (the River forecaster) reads the first ones."""
    path = shipped_path() if config.init == "pretrained" else Path(config.init)
    stored, weights, _ = load_pretrained(path)
    asked = replace(config.model, horizon=stored.horizon)
    if asked != stored and asked != ModelConfig(
        n_features=asked.n_features, horizon=stored.horizon
    ):
        differ = {
            k: (v, getattr(stored, k))
            for k, v in asked.to_dict().items()
            if getattr(stored, k) != v
        }
        raise ConfigurationError(
            f"the pretrained weights {path} are for another network (setting: (asked, in the "
            f"weights) {differ}); leave those settings at their defaults, use init='random', "
            "or make weights for this network with `streamvgan pretrain`"
        )
    if stored.n_features != asked.n_features:
        raise ConfigurationError(
            f"the pretrained weights {path} read {stored.n_features} value(s) per step, this "
            f"engine {asked.n_features} (field_mode={config.field_mode!r}); use "
            "field_mode='channels' or init='random'"
        )
    return replace(config, model=stored), weights


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class StreamEngine:
    """Anomaly scores, forecasts and sampled continuations for many streams, learned online.

    Parameters
    ----------
    config
        An :class:`EngineConfig`; the defaults work out of the box.
    seed
        Seeds the network's initial weights, window sampling and all sampling noise.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.

    Examples
    --------
    >>> import math
    >>> from streamvgan.engine import StreamEngine, EngineConfig, Event
    >>> engine = StreamEngine(EngineConfig(warmup_events=200, first_fit_steps=20), seed=1)
    >>> for t in range(300):
    ...     scores = engine.process([
    ...         Event("a", {"value": math.sin(t / 5)}),
    ...         Event("b", {"value": 100 + 10 * math.cos(t / 7)}),
    ...     ])
    ...     _ = engine.fine_tune()
    >>> engine.model_version
    1
    >>> 0.0 <= scores[0].score <= 1.0
    True
    >>> forecast = engine.forecast(["b"])[0]
    >>> forecast.mean.shape
    (12, 1)
    >>> engine.generate("a", horizon=5, n_samples=3).shape
    (3, 5, 1)
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        config = config or EngineConfig()
        pretrained = config.init != "random"
        weights = None
        if pretrained:  # the architecture comes from the weights file
            config, weights = _initial_weights(config)
        self.config = config
        self.seed = seed
        self.device = resolve_device(device)
        cfg, mcfg = self.config, self.config.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = RecurrentVAEGAN(mcfg)
        if weights is not None:
            model.load_state_dict(weights)
        self.model = model.to(self.device).eval()
        self.trainer = Trainer(
            self.model,
            cfg.learning_rate,
            cfg.critic_learning_rate,
            cfg.batch_size,
            cfg.burn_in,
            seed,
            self.device,
        )
        self.state = StateTable(
            n_features=mcfg.n_features,
            hidden_size=mcfg.hidden_size,
            horizon=mcfg.horizon,
            replay_size=cfg.replay_size,
            smoothing=cfg.smoothing,
            max_streams=cfg.max_streams,
            n_signals=1 + 2 * mcfg.n_features,
            season_window=cfg.season_window,
        )
        # columns of the signal arrays: the model's raw score, then jump and level per field
        f = mcfg.n_features
        self._signal_col = np.array([0] + [1] * f + [2] * f)  # index into SIGNALS
        self._signal_on = np.isin(self._signal_col, [SIGNALS.index(s) for s in cfg.signals])
        self.fields_of: dict[str, tuple[str, ...]] = {}
        # version 0 is the cold start (no network yet); pretrained weights serve from event one
        self.model_version = 1 if pretrained else 0
        self.events_seen = 0
        self._version_floor = 0  # the next fit's version is above it (raise_version_floor)
        #: streams whose state turned non-finite and was reset (see :meth:`_reset_nonfinite`)
        self.streams_reset = 0
        self._last_fit_events = 0
        self._sample_gen = torch.Generator(device=self.device)
        self._sample_gen.manual_seed(seed + 2)
        self._eviction_listeners: list[Callable[[str], None]] = []
        self.state.on_evict = self._on_evicted
        self._lock = threading.RLock()
        self._train_lock = threading.Lock()
        self._z = {q: float(ndtri(q)) for q in cfg.quantiles}
        self._mutations = 0  # bumped by every state change; keys the score->learn memo
        self._memo: tuple | None = None
        self._critic = self.model.critic.frozen() if self.model.critic is not None else None

    # -- properties --------------------------------------------------------------------------
    @property
    def n_streams(self) -> int:
        return len(self.state)

    @property
    def evictions(self) -> int:
        return self.state.evictions

    @property
    def revision(self) -> int:
        """A number that changes whenever the engine's state or weights change (compare two
        readings to know whether a checkpoint would differ from the last one)."""
        return self._mutations

    def raise_version_floor(self, version: int) -> None:
        """Make the next fine-tune's version greater than ``version``: a process that lost its
        weights (killed before its first checkpoint) learns from restored stream states which
        versions it already published, and keeps version numbers monotonic."""
        with self._lock:
            self._version_floor = max(self._version_floor, int(version))

    def add_eviction_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(stream)`` for each stream evicted as least recently seen (inside
        :meth:`process`, under the engine's lock), so callers can drop what they keep per
        stream and stay bounded by ``max_streams`` too."""
        self._eviction_listeners.append(listener)

    def _on_evicted(self, stream: str) -> None:
        self.fields_of.pop(stream, None)
        for listener in self._eviction_listeners:
            listener(stream)

    def streams(self) -> list[str]:
        return list(self.state.streams)

    def fields(self, stream: str) -> list[str]:
        if stream not in self.fields_of:
            raise InvalidInputError(f"unknown stream {stream!r}: no events seen for it yet")
        return list(self.fields_of[stream])

    def state_bytes_per_stream(self) -> int:
        """Bytes of state one univariate stream holds (arrays, not Python bookkeeping)."""
        return self.state.bytes_per_channel()

    # -- validation --------------------------------------------------------------------------
    def _validate(self, event: Event, seen: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
        if not isinstance(event, Event):
            raise InvalidInputError(f"expected an Event, got {type(event).__name__}: {event!r}")
        stream = event.stream
        if not isinstance(stream, str) or not stream:
            raise InvalidInputError(f"stream must be a non-empty string, got {stream!r}")
        if not isinstance(event.values, Mapping) or not event.values:
            raise InvalidInputError(
                f"stream {stream!r}: values must be a non-empty mapping of field -> number, "
                f"got {event.values!r}"
            )
        for name, value in event.values.items():
            if not isinstance(name, str):
                raise InvalidInputError(
                    f"stream {stream!r}: field names must be strings, got {name!r}"
                )
            check_value(value, f"stream {stream!r}: field {name!r}")
        names = tuple(sorted(event.values))
        known = seen.get(stream) or self.fields_of.get(stream)
        if known is not None and names != known:
            missing, extra = sorted(set(known) - set(names)), sorted(set(names) - set(known))
            raise InvalidInputError(
                f"stream {stream!r} has fields {list(known)}; this event has missing fields "
                f"{missing} and extra fields {extra}: send the same fields every time"
            )
        n_features = self.config.model.n_features
        if self.config.field_mode == "joint" and len(names) != n_features:
            raise InvalidInputError(
                f"stream {stream!r}: joint mode expects {n_features} fields, got {list(names)}"
            )
        return names

    def _slot_keys(self, names: tuple[str, ...]) -> list[str]:
        return list(names) if self.config.field_mode == "channels" else ["*"]

    # -- the online step ---------------------------------------------------------------------
    def process(self, events: Sequence[Event]) -> list[Score]:
        """Score, then learn from, ``events`` (any mix of streams, in order per stream).

        Raises :class:`InvalidInputError` naming the first bad event before any state changes.
        """
        with self._lock:
            seen: dict[str, tuple[str, ...]] = {}
            names_list = []
            for event in events:
                names = self._validate(event, seen)
                seen.setdefault(event.stream, names)
                names_list.append(names)
            batch_streams = set(seen)
            for stream, names in seen.items():
                if stream not in self.state:
                    self._mutations += 1
                    self.state.add_stream(stream, self._slot_keys(names), protect=batch_streams)
                    self.fields_of[stream] = names
                else:
                    self.state.touch(stream)
            self._forget_evicted()
            # rounds: the k-th event of every stream goes into round k
            ordinal: dict[str, int] = {}
            rounds: list[list[int]] = []
            for i, event in enumerate(events):
                k = ordinal.get(event.stream, 0)
                ordinal[event.stream] = k + 1
                if k == len(rounds):
                    rounds.append([])
                rounds[k].append(i)
            results: list[Score | None] = [None] * len(events)
            for members in rounds:
                for i, score in zip(members, self._run(events, members, learn=True)):
                    results[i] = score
            self.events_seen += len(events)
            return results  # type: ignore[return-value]

    def score(self, events: Sequence[Event]) -> list[Score]:
        """Score each event as the next event of its stream, changing no state.

        A stream never seen before scores 0.0 (nothing to compare against)."""
        with self._lock:
            for event in events:
                self._validate(event, {})
            known = [i for i, e in enumerate(events) if e.stream in self.state]
            results = [
                Score(
                    e.stream,
                    0.0,
                    0.0,
                    dict.fromkeys(COMPONENTS, 0.0),
                    self.model_version,
                    False,
                    e.ts,
                )
                for e in events
            ]
            # score() never advances state, so events of the same stream are independent
            for i, score in zip(known, self._run(events, known, learn=False)):
                results[i] = score
            return results

    def _forget_evicted(self) -> None:
        if len(self.fields_of) != len(self.state):
            for stream in [s for s in self.fields_of if s not in self.state]:
                del self.fields_of[stream]

    def _std(self, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        # floor relative to the level so constant streams of any scale normalise sanely
        return np.sqrt(np.maximum(var, (1e-4 * np.abs(mean) + 1e-12) ** 2))

    def _run(self, events: Sequence[Event], members: list[int], learn: bool) -> list[Score]:
        cfg = self.config
        st = self.state
        # flatten events to channel rows; an event's channels are contiguous rows
        slot_rows: list[int] = []
        value_rows: list[list[float]] = []
        starts: list[int] = []
        for i in members:
            event = events[i]
            stream_slots = st.streams[event.stream]
            starts.append(len(slot_rows))
            if cfg.field_mode == "channels":
                for key, slot in stream_slots.items():
                    slot_rows.append(slot)
                    value_rows.append([float(event.values[key])])
            else:
                slot_rows.append(stream_slots["*"])
                value_rows.append([float(event.values[k]) for k in self.fields_of[event.stream]])
        if not slot_rows:
            return []
        slots = np.asarray(slot_rows, dtype=np.int64)
        values = np.asarray(value_rows, dtype=np.float64)  # (B, F)
        # score_one followed by learn_one of the same point (River's loop) computes once
        memo_key = (self._mutations, slots.tobytes(), values.tobytes())
        if self._memo is not None and self._memo[0] == memo_key:
            c = self._memo[1]
        else:
            c = self._compute(slots, values)
            self._memo = (memo_key, c)
        if learn:
            self._learn(slots, values, c)
            self._reset_nonfinite(slots, _STEP_ARRAYS, extra=~np.isfinite(c["xn"]).all(-1))
        # published scores are numbers in [0, 1] whatever happened above
        score = np.clip(np.nan_to_num(c["score"], nan=0.0), 0.0, 1.0)
        raw = np.nan_to_num(c["raw"], nan=0.0, posinf=0.0, neginf=0.0)
        comps = np.nan_to_num(c["comps"], nan=0.0, posinf=0.0, neginf=0.0)
        best_rows: Sequence[int]  # the row reported for each member
        if len(slots) == len(members):
            best_rows = range(len(members))
        else:  # several channels per event: report the most anomalous
            bounds = [*starts, len(slots)]
            best_rows = [a + int(np.argmax(score[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
        return [
            Score(
                stream=events[i].stream,
                score=float(score[best]),
                raw=float(raw[best]),
                components=dict(zip(COMPONENTS, comps[best].tolist())),
                model_version=self.model_version,
                warm=c["warm"],
                ts=events[i].ts,
            )
            for i, best in zip(members, best_rows)
        ]

    def _reset_nonfinite(
        self,
        slots: np.ndarray,
        names: Sequence[str] | None = None,
        extra: np.ndarray | None = None,
    ) -> int:
        """Reset every stream with a channel in ``slots`` whose state (arrays ``names``, all
        by default) holds a NaN or an infinity, or where ``extra`` is True; return how many.

        Inputs are bounded (:data:`~streamvgan.engine.values.MAX_ABS_VALUE`), so this is a
        guard against what should not happen (diverged weights, a corrupt restored state):
        a stream left NaN would score NaN forever, a reset one starts again as new. Counted
        in :attr:`streams_reset`."""
        bad = self.state.nonfinite_rows(slots, names)
        if extra is not None:
            bad |= extra
        if not bad.any():
            return 0
        owner = self.state.slot_owner
        streams = sorted({owner[int(slot)][0] for slot in slots[bad] if int(slot) in owner})
        for stream in streams:
            self.state.reset_stream(stream)
        self._mutations += 1
        self.streams_reset += len(streams)
        log.warning(
            "reset the state of %d streams that turned non-finite (NaN or inf), e.g. "
            "%r; they start again as new streams",
            len(streams),
            streams[0],
        )
        return len(streams)

    def _compute(self, slots: np.ndarray, values: np.ndarray) -> dict:
        """Everything about events ``values`` (B, F) at channels ``slots`` that needs no state
        change: normalised values, components, raw and calibrated scores, the network step."""
        cfg, st = self.config, self.state
        n = st.n[slots]
        mean, var = st.norm_mean[slots], st.norm_var[slots]
        std = self._std(mean, var)
        xn = np.clip((values - mean) / std, -cfg.clip, cfg.clip)
        xn[n < 2] = 0.0
        warm = self.model_version > 0

        comps = np.zeros((len(slots), len(COMPONENTS)), dtype=np.float64)
        out = fm = None
        if warm:
            fm, fs = st.f_mean[slots, 0], st.f_scale[slots, 0]  # (B, F) forecast of x_t
            fs = np.maximum(fs, cfg.model.min_scale)  # a channel new since the last fit has none
            comps[:, 0] = (np.abs(xn - fm) / fs).sum(-1)
            x_t = torch.from_numpy(xn.astype(np.float32)).to(self.device)
            h_t = torch.from_numpy(st.h[slots]).to(self.device)
            out = self.model.step(x_t, h_t)
            comps[:, 1] = out.recon_error.cpu().numpy()
            if self._critic is not None:
                wc = cfg.model.critic_window
                window = np.concatenate([st.recent_values(slots, wc - 1), xn[:, None, :]], axis=1)
                with torch.no_grad():
                    d = self._critic(torch.from_numpy(window.astype(np.float32)).to(self.device))
                comps[:, 2] = -d.cpu().numpy()
        else:
            prev = st.recent_values(slots, 1)[:, 0]
            comps[:, 0] = np.abs(xn).sum(-1)
            comps[:, 1] = np.abs(xn - prev).sum(-1) * (n >= 3)

        # surprise and reconstruction are already in units of the model's predicted scale; the
        # critic's output has no natural unit, so it is standardised by its running statistics
        c_mean, c_var = (
            st.critic_mean[slots].astype(np.float64),
            st.critic_var[slots].astype(np.float64),
        )
        critic_z = np.clip((comps[:, 2] - c_mean) / np.sqrt(np.maximum(c_var, 1e-4)), -5.0, 20.0)
        critic_z[st.warm_n[slots] < 10] = 0.0  # weighted 0 anyway when cold or criticless
        critic_w = cfg.critic_weight if (warm and self._critic is not None) else 0.0
        raw = (
            cfg.surprise_weight * comps[:, 0]
            + cfg.reconstruction_weight * comps[:, 1]
            + critic_w * critic_z
        ) / (cfg.surprise_weight + cfg.reconstruction_weight + critic_w)

        # two model-free signals beside it, per field, in the stream's own units: the jump
        # |x_t - x_{t-1}|, and the level shift |short-run level - long-run level| / long-run sd
        lvl_mean = st.lvl_mean[slots]
        lvl_sd = self._std(lvl_mean, st.lvl_var[slots])
        settled = (n >= _SIGNAL_WARMUP)[:, None]
        before = st.last[slots]
        jump = np.abs(values - before)
        if cfg.season_window:
            # with a season of P events found, the jump is from the same moment one season
            # back, or two if that is closer (so an anomaly does not echo one season later)
            period = st.period[slots]  # (B, F)
            seasonal = (period > 0) & (n[:, None] >= period)
            if seasonal.any():
                ring = st.season_buf[slots]
                back = []
                for k in (1, 2):
                    pos = (n[:, None] - k * period) % cfg.season_window
                    lagged = np.take_along_axis(ring, pos[:, None, :], axis=1)[:, 0]
                    ok = seasonal & (n[:, None] >= k * period)
                    back.append(np.where(ok, np.abs(values - lagged), np.inf))
                jump = np.where(seasonal, np.minimum(back[0], back[1]), jump)
        jump = np.where(settled, jump, 0.0)
        a_short = _ew_alpha(n, cfg.level_halflife)[:, None]
        short = st.lvl_short[slots] + a_short * (values - st.lvl_short[slots])
        level = np.where(settled, np.abs(short - lvl_mean) / lvl_sd, 0.0)
        signals = np.concatenate([raw[:, None], jump, level], axis=1)  # (B, K)
        comps[:, 3] = jump.max(-1)
        comps[:, 4] = level.max(-1)

        # calibration (anomaly likelihood), per signal: its smoothed value against its own
        # exponentially weighted mean and sd for this channel; the score takes the largest
        size = st.sizes["S"]
        recent = st.recent[slots].astype(np.float64)  # (B, S, K)
        cal_n = st.cal_n[slots]  # (B, K)
        age = (n[:, None] - np.arange(size)[None, :] - 1) % size + 1  # 1 = written last event
        unwritten = age[:, :, None] > np.minimum(cal_n, size)[:, None, :]  # since a restart
        recent[unwritten] = np.nan
        recent[np.arange(len(slots)), n % size] = signals
        smoothed = np.nanmean(recent, axis=1)  # (B, K)
        mu, sd = st.cal_mean[slots], np.sqrt(st.cal_var[slots])
        # sd floor: absolute for the model's score (already in predicted-scale units), relative
        # to the signal's mean for the jump and level (in the stream's own units)
        floor = np.where(self._signal_col == 0, _CAL_SD_FLOOR, _CAL_SD_FLOOR * np.abs(mu)) + 1e-12
        z = (smoothed - mu) / np.maximum(sd, floor)
        z[:, self._signal_col == 0] *= cfg.model_signal_weight
        z[(cal_n < 2 * size) | ~self._signal_on[None, :]] = -np.inf
        score = calibrated_score(z.max(-1))
        young = n < max(cfg.min_history, 2)
        score[young] = 0.0
        if cfg.range_tolerance is not None:
            # a new extreme: beyond the range of everything seen by a fraction of that range
            lo, hi = st.seen_min[slots], st.seen_max[slots]
            margin = cfg.range_tolerance * (hi - lo)
            broken = ((values > hi + margin) | (values < lo - margin)).any(-1)
            score[broken & ~young] = 1.0
        likely = score  # before the cooldown: decides the learning weight
        score = np.where(st.quiet[slots] > 0, np.minimum(score, cfg.cooldown_cap), score)
        return {
            "n": n,
            "mean": mean,
            "var": var,
            "std": std,
            "xn": xn,
            "comps": comps,
            "raw": raw,
            "signals": signals,
            "short": short,
            "fm": fm,
            "smoothed": smoothed,
            "z": z,
            "likely": likely,
            "score": score,
            "out": out,
            "warm": warm,
        }

    def _learn(self, slots: np.ndarray, values: np.ndarray, c: dict) -> None:
        cfg, st = self.config, self.state
        self._mutations += 1
        n, mean, var, std, xn = c["n"], c["mean"], c["var"], c["std"], c["xn"]
        comps, smoothed, score, out = c["comps"], c["smoothed"], c["score"], c["out"]
        anomalous = c["likely"] >= cfg.downweight_threshold
        weight = np.where(anomalous, cfg.anomalous_weight, 1.0)
        st.push(slots, xn.astype(np.float32), weight)
        st.recent[slots, n % st.sizes["S"]] = c["signals"]
        # calibration statistics, the alert cooldown and the range of values seen
        cal_n = st.cal_n[slots]
        st.cal_n[slots] = cal_n + 1
        st.cal_mean[slots], st.cal_var[slots] = _ew_moments(
            st.cal_mean[slots],
            st.cal_var[slots],
            smoothed - st.cal_mean[slots],
            _ew_alpha(cal_n, cfg.calibration_halflife),
        )
        quiet = st.quiet[slots]
        st.quiet[slots] = np.where(
            (quiet == 0) & (score >= cfg.cooldown_threshold),
            cfg.alert_cooldown,
            np.maximum(quiet - 1, 0),
        )
        first = (n == 0)[:, None]
        st.seen_min[slots] = np.where(first, values, np.minimum(st.seen_min[slots], values))
        st.seen_max[slots] = np.where(first, values, np.maximum(st.seen_max[slots], values))
        # critic statistics: exponentially weighted, winsorised, slower for anomalies
        cn = st.warm_n[slots]
        if c["fm"] is not None:  # forecast statistics: one-step errors of network and persistence
            # from the stream's `min_history`-th value on, as its scores: before, the
            # normaliser's scale is still settling and errors in its units are inflated (the
            # very first, against an empty state, is ~1e24 for a stream near 1000)
            start = max(cfg.min_history, 2)
            counted = np.minimum(cn, np.maximum(n - start, 0))
            a_f = (_ew_alpha(counted, cfg.score_halflife) * weight * (n >= start))[:, None]
            e_model = (xn - c["fm"]) ** 2
            e_last = ((values - st.last[slots]) / std) ** 2
            st.err_model[slots] += a_f * (e_model - st.err_model[slots])
            st.err_last[slots] += a_f * (e_last - st.err_last[slots])
        alpha_c = _ew_alpha(cn, cfg.score_halflife) * weight
        c_mean, c_var = (
            st.critic_mean[slots].astype(np.float64),
            st.critic_var[slots].astype(np.float64),
        )
        c_sd = np.sqrt(np.maximum(c_var, 1e-4))
        dc = comps[:, 2] - c_mean
        dc = np.where(cn >= 10, np.clip(dc, -10 * c_sd, 10 * c_sd), dc)
        st.critic_mean[slots], st.critic_var[slots] = _ew_moments(c_mean, c_var, dc, alpha_c)
        # normaliser: level follows fully, scale from a winsorised deviation
        alpha = _ew_alpha(n, cfg.normaliser_halflife)[:, None]
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
        if c["fm"] is not None:
            # keep the forecast errors in units of the *current* scale, as if every past error
            # had been measured with it (the blend's band is std * sqrt(err)); measured with
            # the scale of their time, a stream's early errors would stay inflated for ~1000
            # events while its scale settles
            ratio = (std / self._std(st.norm_mean[slots], st.norm_var[slots])) ** 2
            st.err_model[slots] *= ratio
            st.err_last[slots] *= ratio
        st.warm_n[slots] = cn + 1
        # long- and short-run levels of the `level` signal (plain EW statistics, like the
        # normaliser's but neither winsorised nor re-levelled, so a shift stays visible)
        st.lvl_mean[slots], st.lvl_var[slots] = _ew_moments(
            st.lvl_mean[slots],
            st.lvl_var[slots],
            values - st.lvl_mean[slots],
            _ew_alpha(n, cfg.normaliser_halflife)[:, None],
        )
        st.lvl_short[slots] = c["short"]
        if cfg.season_window:
            st.season_buf[slots, n % cfg.season_window] = values
            half = max(cfg.season_window // 2, 1)
            for row in np.flatnonzero((n + 1) % half == 0):  # look for a season now and then
                ring = st.season_values(slots[row], n[row] + 1)
                st.period[slots[row]] = [
                    seasonal_period(ring[:, f], cfg.season_min_correlation)
                    for f in range(ring.shape[1])
                ]
        st.last[slots] = values
        st.n[slots] = n + 1
        if out is not None:
            st.h[slots] = out.h.cpu().numpy()
            st.f_mean[slots] = out.forecast_mean.cpu().numpy()
            st.f_scale[slots] = out.forecast_scale.cpu().numpy()

    # -- forecasts and continuations ---------------------------------------------------------
    def _stream_slots(self, stream: str) -> tuple[list[str], np.ndarray]:
        slots = self.state.slots_of(stream)
        if slots is None:
            raise InvalidInputError(f"unknown stream {stream!r}: no events seen for it yet")
        names = list(self.fields_of[stream])
        return names, np.asarray(list(slots.values()), dtype=np.int64)

    def forecast(self, streams: Sequence[str]) -> list[Forecast]:
        """Mean and quantiles of the next ``config.horizon`` values of each stream.

        Before the first fit: the last value, with quantiles from the running standard
        deviation (a persistence forecast)."""
        with self._lock:
            return [self._forecast_one(s) for s in streams]

    def _forecast_one(self, stream: str) -> Forecast:
        st, horizon = self.state, self.config.horizon
        names, slots = self._stream_slots(stream)
        std = self._std(st.norm_mean[slots], st.norm_var[slots])  # (U, F)
        last = np.repeat(st.last[slots][:, None, :], horizon, axis=1)  # persistence (U, H, F)
        last_spread = np.repeat(std[:, None, :], horizon, axis=1)
        if self.model_version > 0 and st.n[slots].min() >= 1:
            mean = st.norm_mean[slots][:, None, :] + std[:, None, :] * st.f_mean[slots]  # (U, H, F)
            spread = std[:, None, :] * st.f_scale[slots]
            if self.config.forecast_blend:
                # inverse-MSE weights (Bates & Granger 1969) from the recent one-step errors;
                # equal weights until both have been measured
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
                    (measured & (st.err_last[slots] > 0))[:, None, :], walk, last_spread
                )
                # both errors grow with the horizon alike, so their weights do not depend on it
                candidates = [
                    (mean, spread, e_m[:, None, :] * steps),
                    (last, last_spread, e_l[:, None, :] * steps),
                ]
                # and the value one season back, where a season is known: its error does
                # not grow within a season, so it weighs more the further ahead
                season = self._seasonal_naive(slots, std)
                if season is not None:
                    s_mean, s_spread, s_mse = season
                    candidates.append(
                        (s_mean, s_spread, np.where(measured[:, None, :], s_mse, np.inf))
                    )
                mean, spread = _inverse_mse_blend(candidates)
        else:
            mean, spread = last, last_spread
        # (U, H, F) -> (H, fields): channels are one field each, joint is one row of F
        to_fields = (
            (lambda a: a[:, :, 0].T) if self.config.field_mode == "channels" else (lambda a: a[0])
        )
        quantiles = {q: to_fields(mean + z * spread) for q, z in self._z.items()}
        return Forecast(
            stream, names, to_fields(mean), quantiles, self.model_version, self.model_version > 0
        )

    def _seasonal_naive(self, slots: np.ndarray, std: np.ndarray) -> tuple | None:
        """The seasonal-naive forecast of channels ``slots`` (the value one season before each
        step) and its band, in original units, and its mean squared error over the season ring
        in normalised units, as (U, H, F) each; None if no channel has a season and enough
        history to measure it. Channels without one get an infinite error (weight 0)."""
        cfg, st, horizon = self.config, self.state, self.config.horizon
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

    def generate(self, stream: str, horizon: int, n_samples: int) -> np.ndarray:
        """``n_samples`` sampled continuations (n_samples, horizon, n_fields) in original units,
        drawn by running the prior, decoder and GRU forward from the stream's current state.

        Before the first fit: independent draws around the last value with the running
        standard deviation."""
        if not isinstance(horizon, int) or horizon < 1:
            raise InvalidInputError(f"horizon must be a positive int, got {horizon!r}")
        if not isinstance(n_samples, int) or n_samples < 1:
            raise InvalidInputError(f"n_samples must be a positive int, got {n_samples!r}")
        with self._lock:
            st = self.state
            names, slots = self._stream_slots(stream)
            mean, std = st.norm_mean[slots], self._std(st.norm_mean[slots], st.norm_var[slots])
            u, f = len(slots), self.config.model.n_features
            if self.model_version > 0:
                h = torch.from_numpy(np.repeat(st.h[slots], n_samples, axis=0)).to(self.device)
                with torch.no_grad():
                    xn = self.model.generate(h, horizon, self._sample_gen).cpu().numpy()
                xn = xn.reshape(u, n_samples, horizon, f)
                samples = mean[:, None, None, :] + std[:, None, None, :] * xn
            else:
                noise = torch.randn(
                    (u, n_samples, horizon, f), generator=self._sample_gen, device=self.device
                )
                samples = (
                    st.last[slots][:, None, None, :] + std[:, None, None, :] * noise.cpu().numpy()
                )
            if self.config.field_mode == "channels":
                return np.moveaxis(samples[..., 0], 0, -1)  # (n, H, fields)
            return samples[0]

    # -- fine-tuning -------------------------------------------------------------------------
    def fine_tune_due(self) -> bool:
        cfg = self.config
        if self.model_version == 0:
            return self.events_seen >= cfg.warmup_events
        return self.events_seen - self._last_fit_events >= cfg.fit_every

    def sample_windows(self, n_windows: int) -> TrainingWindows | None:
        """Up to ``n_windows`` windows from the replay buffers, uniformly over eligible
        channels and positions; None when no channel has a full window yet."""
        cfg, st = self.config, self.state
        with self._lock:
            used = st.used_slots()
            n = st.n[used]
            eligible = used[n >= cfg.window]
            if len(eligible) == 0:
                return None
            rng = self.trainer.rng
            pick = eligible[rng.integers(0, len(eligible), n_windows)]
            n_pick = st.n[pick]
            span = np.minimum(n_pick, cfg.replay_size) - cfg.window
            ends = n_pick - (rng.random(n_windows) * (span + 1)).astype(np.int64)
            x, w = st.windows(pick, ends, cfg.window)
            return TrainingWindows(x.copy(), w.astype(np.float32))

    def fine_tune(
        self,
        steps: int | None = None,
        force: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitReport | None:
        """Fine-tune when due (or when ``force``), then swap the new weights in.

        Safe to call from a background thread while :meth:`process` runs in another: training
        uses a private copy of the network; only the swap takes the engine's lock."""
        if not (force or self.fine_tune_due()):
            return None
        with self._train_lock:
            cfg = self.config
            first = self.model_version == 0
            steps = steps or (cfg.first_fit_steps if first else cfg.fit_steps)
            events_at_start = self.events_seen
            windows = self.sample_windows(min(cfg.batch_size * steps, 8192))
            if windows is None:
                log.debug("fine-tune skipped: no stream has %d points yet", cfg.window)
                return None
            start = time.perf_counter()
            losses = self.trainer.train(windows, steps, should_stop)
            if losses is None:  # asked to stop: discard the partial fit
                log.info(
                    "fine-tune interrupted after %.2fs; weights unchanged",
                    time.perf_counter() - start,
                )
                return None
            duration = time.perf_counter() - start
            version = self.install_weights(self.trainer.weights())
            self._last_fit_events = events_at_start
            report = FitReport(version, steps, duration, losses, len(windows))
            log.info(
                "fine-tune -> model_version=%d steps=%d windows=%d %.2fs losses=%s",
                version,
                steps,
                len(windows),
                duration,
                {k: round(v, 3) for k, v in losses.items()},
            )
            return report

    def install_weights(
        self, weights: Mapping[str, torch.Tensor], version: int | None = None
    ) -> int:
        """Swap ``weights`` in atomically, re-warm every stream's state from its replay buffer
        so it matches them, and return the new model version."""
        new_model = RecurrentVAEGAN(self.config.model).to(self.device)
        try:
            new_model.load_state_dict(dict(weights))
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"weights do not fit this model configuration: {exc}") from exc
        new_model.eval()
        with self._lock:
            was_cold = self.model_version == 0
            self._mutations += 1
            self.model = new_model
            self._critic = new_model.critic.frozen() if new_model.critic is not None else None
            if version is None:
                self.model_version = max(self.model_version, self._version_floor) + 1
            else:
                self.model_version = int(version)
            if was_cold:  # the components change meaning (fallback -> model): restart their
                # statistics and the calibration history
                used = self.state.used_slots()
                self.state.warm_n[used] = 0
                self.state.cal_n[used, 0] = 0  # the model signal's column
                self.state.cal_mean[used, 0] = 0.0
                self.state.cal_var[used, 0] = 0.0
            self._rewarm()
            return self.model_version

    def _rewarm(self, slots: np.ndarray | None = None, chunk: int = 4096) -> None:
        st, window = self.state, self.config.window
        used = st.used_slots() if slots is None else slots
        for start in range(0, len(used), chunk):
            part = used[start : start + chunk]
            x = torch.from_numpy(st.recent_values(part, min(window, st.sizes["R"]))).to(self.device)
            with torch.no_grad():
                _, h = self.model.rnn(x)
                h = h.squeeze(0)
                f_mean, f_scale = self.model.forecast(h, x[:, -1])
            st.h[part] = h.cpu().numpy()
            st.f_mean[part] = f_mean.cpu().numpy()
            st.f_scale[part] = f_scale.cpu().numpy()
            self._reset_nonfinite(part, ("h", "f_mean", "f_scale"))

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write weights, configuration, normalisers and every stream's state to ``directory``."""
        with self._lock:
            return checkpoint.save(self, Path(directory))

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        settings: EngineConfig | None = None,
    ) -> StreamEngine:
        """Rebuild an engine from :meth:`save`'s directory (``torch.load(weights_only=True)``);
        with ``settings``, only the architecture comes from the checkpoint
        (:func:`~streamvgan.engine.config.merge_checkpoint_config`)."""
        return checkpoint.load(cls, Path(directory), device, settings)

    def to_bytes(self) -> bytes:
        """The whole engine as bytes (what :meth:`save` writes), e.g. for pickling."""
        with self._lock:
            return checkpoint.dumps(self)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        device: str | torch.device = "cpu",
        settings: EngineConfig | None = None,
    ) -> StreamEngine:
        return checkpoint.loads(cls, data, device, settings=settings)

    def __getstate__(self) -> dict:
        return {"bytes": self.to_bytes(), "device": str(self.device)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(StreamEngine.from_bytes(state["bytes"], state["device"]).__dict__)

    def export_weights(self) -> bytes:
        """The serving weights and model config as bytes (for a model topic)."""
        with self._lock:
            payload = {
                "model_config": self.config.model.to_dict(),
                "weights": self.model.state_dict(),
                "model_version": self.model_version,
            }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    def import_weights(self, data: bytes, version: int) -> None:
        """Install weights from :meth:`export_weights` bytes as ``version``."""
        payload = checkpoint.load_bytes(data, "model weights")
        if payload.get("model_config") != self.config.model.to_dict():
            raise CheckpointError(
                "model weights were trained with another model configuration: "
                f"{payload.get('model_config')} != {self.config.model.to_dict()}"
            )
        self.trainer.model.load_state_dict(payload["weights"])
        self.install_weights(payload["weights"], version=version)

    def export_stream(self, stream: str) -> bytes | None:
        """One stream's state as bytes (for a changelog); None if the stream is unknown."""
        with self._lock:
            slots = self.state.slots_of(stream)
            if slots is None:
                return None
            return checkpoint.stream_to_bytes(self, stream, slots)

    def drop_stream(self, stream: str) -> bool:
        """Forget a stream's state (e.g. its partition moved to another replica)."""
        with self._lock:
            if stream not in self.state:
                return False
            self._mutations += 1
            self.state.remove_stream(stream)
            self.fields_of.pop(stream, None)
            return True

    def import_stream(self, stream: str, data: bytes) -> None:
        """Restore one stream's state from :meth:`export_stream` bytes (replacing any)."""
        with self._lock:
            self._mutations += 1
            checkpoint.stream_from_bytes(self, stream, data)
            self._reset_nonfinite(np.asarray(list(self.state.streams[stream].values())))
