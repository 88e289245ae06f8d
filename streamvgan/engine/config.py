"""EngineConfig: everything the many-stream engine needs besides the network's architecture."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from streamvgan.errors import ConfigurationError
from streamvgan.nn.model import ModelConfig

FIELD_MODES = ("channels", "joint")
#: detection signals whose calibrated maximum is the anomaly score (see StreamEngine)
SIGNALS = ("model", "jump", "level")
#: what the model signal is made of (README "How the score is computed", step 1):
#: "reconstruction" weighs the one-step forecast error, the posterior reconstruction error and
#: the critic; "predictive" is the error of the forecast made before the value arrived alone;
#: "forecast_error" is that error in the stream's own units, measured as the jump is
MODEL_SIGNALS = ("reconstruction", "predictive", "forecast_error")
#: fields of older versions that a saved configuration may still hold; ignored when loading
_RETIRED = {"history_size"}
#: old name -> current name; a saved configuration (checkpoint) and ``from_params`` (River
#: adapters, ``--engine-param``, the TOML ``[engine]`` table) still accept the old names.
#: ``alert_threshold`` was renamed because the service's ``alert_threshold`` (the ``anomaly``
#: flag of score records, 0.99) is another concept than the score that starts the cooldown.
RENAMED = {"alert_threshold": "cooldown_threshold", "anomaly_threshold": "downweight_threshold"}
#: what a checkpoint's values decide over the current settings (:func:`merge_checkpoint_config`):
#: the architecture (the network, and what shapes the per-stream state arrays), the learning
#: rates (saved inside the optimisers' state) and ``init`` (where the first weights came from;
#: a checkpoint's weights replace them).
FROM_CHECKPOINT = (
    "model",
    "field_mode",
    "replay_size",
    "smoothing",
    "season_window",
    "learning_rate",
    "critic_learning_rate",
    "init",
)

log = logging.getLogger(__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    requirement = "a positive int" if low == 1 else f"an int >= {low}"
    return (lambda v: _is_int(v) and v >= low), requirement


def _number_in(low: float, high: float, *, low_open: bool, high_open: bool) -> tuple:
    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return check, f"a number in {left}{low:g}, {high:g}{right}"


_POSITIVE_INT = _int_at_least(1)
_POSITIVE = ((lambda v: _is_number(v) and v > 0), "a number > 0")
_PROBABILITY = _number_in(0.0, 1.0, low_open=False, high_open=False)

#: field -> (check, what the value must be, hint): one line per rule, checked in this order
_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "field_mode": ((lambda v: v in FIELD_MODES), f"one of {FIELD_MODES}", ""),
    **{
        name: (*_POSITIVE_INT, "")
        for name in (
            "max_streams",
            "replay_size",
            "window",
            "warmup_events",
            "fit_every",
            "first_fit_steps",
            "fit_steps",
            "batch_size",
            "smoothing",
            "relevel_after",
        )
    },
    "burn_in": (*_int_at_least(0), ""),
    "min_history": (*_int_at_least(0), ""),
    "alert_cooldown": (*_int_at_least(0), " (0: off)"),
    "learning_rate": (*_POSITIVE, ""),
    "finetune_anchor": (
        (lambda v: _is_number(v) and v >= 0),
        "a number >= 0",
        " (0: off; it only acts on an engine started from pretrained weights)",
    ),
    "critic_learning_rate": (*_POSITIVE, ""),
    "normaliser_halflife": (*_POSITIVE, ""),
    "score_halflife": (*_POSITIVE, ""),
    "calibration_halflife": (*_POSITIVE, ""),
    "level_halflife": (*_POSITIVE, ""),
    "clip": (*_POSITIVE, ""),
    "range_tolerance": (
        (lambda v: v is None or (_is_number(v) and v >= 0)),
        "a number >= 0 or None (off)",
        "",
    ),
    "cooldown_threshold": (*_PROBABILITY, ""),
    "cooldown_cap": (*_PROBABILITY, ""),
    "downweight_threshold": (*_number_in(0.0, 1.0, low_open=True, high_open=False), ""),
    "anomalous_weight": (*_PROBABILITY, ""),
    "anomalous_calibration_weight": (*_PROBABILITY, ""),
    "reference_events": (*_int_at_least(0), " (0: off)"),
    "quantiles": (
        lambda v: isinstance(v, tuple) and bool(v) and all(_is_number(q) and 0 < q < 1 for q in v),
        "a non-empty sequence of levels in (0, 1)",
        "",
    ),
    "signals": (
        lambda v: (
            isinstance(v, tuple) and bool(v) and set(v) <= set(SIGNALS) and len(set(v)) == len(v)
        ),
        f"a non-empty sequence drawn from {SIGNALS} without repeats",
        " (the CLI and TOML also take a comma-separated string, e.g. jump,level)",
    ),
    "model_signal": ((lambda v: v in MODEL_SIGNALS), f"one of {MODEL_SIGNALS}", ""),
    "model_signal_weight": (
        *_number_in(0.0, 10.0, low_open=True, high_open=False),
        "; use signals=jump,level to leave the model out",
    ),
    "forecast_blend": ((lambda v: isinstance(v, bool)), "true or false", ""),
    "forecast_network": ((lambda v: isinstance(v, bool)), "true or false", ""),
    "season_window": (
        (lambda v: _is_int(v) and (v == 0 or v >= 16)),
        "0 (off) or an int >= 16",
        "",
    ),
    "season_min_correlation": (*_number_in(0.0, 1.0, low_open=True, high_open=False), ""),
    "init": (
        (lambda v: isinstance(v, str) and bool(v)),
        "'random', 'pretrained' or the path of a weights file made by `streamvgan pretrain`",
        "",
    ),
}


@dataclass(frozen=True)
class EngineConfig:
    """Settings of :class:`streamvgan.engine.StreamEngine` (defaults work out of the box).

    ``field_mode="channels"`` models each field of a stream as its own univariate channel
    sharing the weights (any number of fields per stream, the score of an event is its most
    anomalous channel); ``"joint"`` feeds all ``model.n_features`` fields of a stream to the
    network together, so it also models how they move with each other.

    Values are taken as given (``signals`` and ``quantiles`` are tuples): the command line and
    the TOML file parse their strings in :mod:`streamvgan.service.settings`.

    Examples
    --------
    >>> config = EngineConfig.from_params(hidden_size=16, warmup_events=100)
    >>> config.model.hidden_size, config.warmup_events, config.horizon
    (16, 100, 12)
    >>> EngineConfig(field_mode="both")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamvgan.errors.ConfigurationError: EngineConfig.field_mode must be one of (...), got 'both'
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    field_mode: str = "channels"
    max_streams: int = 100_000  # least-recently-seen streams beyond this are evicted
    replay_size: int = 256  # points of recent history kept per channel
    window: int = 64  # length of the training windows
    burn_in: int = 16  # steps of each window that only warm the GRU state
    warmup_events: int = 400  # events seen before the first fit (cold-start fallback until then)
    fit_every: int = 1000  # events (of all streams together) between fine-tunes
    first_fit_steps: int = 300  # optimiser steps of the first fit
    fit_steps: int = 40  # optimiser steps of each later fine-tune
    batch_size: int = 32  # windows per optimiser step
    learning_rate: float = 3e-3
    critic_learning_rate: float = 1e-3
    finetune_anchor: float = 0.0  # weight of the penalty sum((w - w_pretrained)^2) in every
    # fine-tune of a pretrained network (L2-SP; 0: off), against forgetting the pretraining
    normaliser_halflife: float = 1000.0  # events; how fast level and scale follow the data
    relevel_after: int = 16  # this many values in a row beyond 4 sd on one side: new level
    score_halflife: float = 500.0  # events; how fast the component statistics adapt
    signals: tuple[str, ...] = SIGNALS  # detection signals the score takes the maximum over
    model_signal: str = "reconstruction"  # MODEL_SIGNALS: "predictive" scores x_t by the
    # forecast made before it arrived only, not by the posterior that has already seen it;
    # "forecast_error" by that forecast's error in the stream's own units (as the jump)
    model_signal_weight: float = 0.6  # the model signal's z is multiplied by this before the
    # maximum (at 1.0 it raised more false alarms on NAB than the jump and level signals)
    level_halflife: float = 3.0  # events; the short-run level of the `level` signal
    season_window: int = 0  # values kept to find a season for the jump signal (0: off; 600 in
    # the River adapters): 4 bytes per value and stream, in memory and in every changelog record
    season_min_correlation: float = 0.8  # autocorrelation at the season needed to use it
    smoothing: int = 10  # values of each signal averaged before calibration
    calibration_halflife: float = 2000.0  # events; memory of the smoothed-score statistics
    min_history: int = 20  # events before a stream gets non-zero scores
    range_tolerance: float | None = 0.05  # beyond the seen range by this fraction of it: a new
    # extreme, scored 0.9999994 to 1.0 (the further beyond, the higher)
    cooldown_threshold: float = 0.9994  # a score at or above starts the alert cooldown (not the
    # service's alert_threshold, 0.99, which only flags records: a cooldown after every 0.99
    # would mute the next alert; 0.9994 was tuned on NAB, docs/evaluation.md)
    alert_cooldown: int = 0  # events after an alert whose scores are capped at `cooldown_cap`
    cooldown_cap: float = 0.5
    surprise_weight: float = 1.0
    reconstruction_weight: float = 1.0
    critic_weight: float = 0.0  # the critic's judgement in the model signal; at 0 (the default)
    # the critic is still trained (adversarially) but not run when scoring: on NAB the same
    # standard and low-FN scores, 1.44 lower low-FP (docs/evaluation.md, "The critic at scoring
    # time"), and a 1.3-1.7x faster engine
    downweight_threshold: float = 0.999  # scores at or above are learned at `anomalous_weight`
    anomalous_weight: float = 0.1
    anomalous_calibration_weight: float = 1.0  # the same for the calibration: the weight at
    # which such points update each signal's calibration statistics and the long-run level and
    # sd the level signal measures from. 1.0 follows every value alike; 0.1 keeps a lasting
    # fault scoring high, a ten times slower calibration while it lasts (SKAB's rig faults
    # gain by it; NAB, which counts only the first alert of an incident, loses; see
    # docs/evaluation.md, "A calibration that does not follow a fault")
    reference_events: int = 0  # a channel's first this many events are its reference of
    # normal: after them its calibration statistics and the level signal's long-run level and
    # sd stop changing (the network and the normaliser still learn). 0 (off): they follow the
    # stream for ever. For streams whose start is known to be normal and whose faults must
    # score high for as long as they last (a test rig after commissioning; SKAB's protocol
    # fits on the first 400 rows): docs/evaluation.md, "A reference of normal"
    clip: float = 20.0  # normalised values are clipped to +-clip
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    forecast_blend: bool = True  # weigh the network's forecast against the last value
    forecast_network: bool = True  # False: the blend without the network's forecast (the last
    # value and the seasonal forms alone), an ablation that measures what the network adds
    init: str = "pretrained"  # the network's first weights: "pretrained" (the weights
    # shipped in the package, docs/pretraining.md), "random" (a cold start and a first fit
    # after `warmup_events`) or the path of a `streamvgan pretrain` file

    @property
    def horizon(self) -> int:
        return self.model.horizon

    def __post_init__(self) -> None:
        for name in ("quantiles", "signals"):  # a list (JSON, TOML) is taken for a tuple
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name, (check, requirement, hint) in _RULES.items():
            value = getattr(self, name)
            if not check(value):
                raise ConfigurationError(
                    f"EngineConfig.{name} must be {requirement}, got {value!r}{hint}"
                )
        if self.field_mode == "channels" and self.model.n_features != 1:
            raise ConfigurationError(
                "field_mode='channels' needs model.n_features=1 (each field is its own channel);"
                f" got n_features={self.model.n_features}. Use field_mode='joint' instead."
            )
        need = self.burn_in + max(self.model.horizon, self.model.critic_window) + 1
        if self.window < need:
            raise ConfigurationError(
                f"EngineConfig.window={self.window} is too short: it needs at least burn_in + "
                f"max(horizon, critic_window) + 1 = {need}"
            )
        if not (self.forecast_blend or self.forecast_network):
            raise ConfigurationError(
                "EngineConfig.forecast_network=False leaves the network out of the blend, so it "
                "needs forecast_blend=True (forecast_blend=False is the network alone)"
            )
        if self.replay_size < self.window:
            raise ConfigurationError(
                f"EngineConfig.replay_size={self.replay_size} must be >= window={self.window}"
            )

    def with_model(self, **changes) -> EngineConfig:
        return replace(self, model=replace(self.model, **changes))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["quantiles"] = list(self.quantiles)
        data["signals"] = list(self.signals)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EngineConfig:
        """The inverse of :meth:`to_dict`; also reads what older versions saved."""
        data = dict(data)
        for name in _RETIRED & set(data):
            log.warning("ignoring the retired EngineConfig field %r (%r)", name, data.pop(name))
        for old in RENAMED.keys() & data.keys():  # saved before the rename: not the user's doing
            data[RENAMED[old]] = data.pop(old)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(f"unknown EngineConfig fields {unknown}")
        model = ModelConfig.from_dict(data.pop("model", {}))
        return cls(model=model, **data)

    @classmethod
    def from_params(cls, **params) -> EngineConfig:
        """Build from a flat mapping where model fields (``hidden_size``, ``adversarial``...)
        and engine fields sit side by side, as the River adapters receive them. Lists are
        taken for tuples; an old name (:data:`RENAMED`) still works, with a warning."""
        params = dict(params)
        for old in RENAMED.keys() & params.keys():
            new = RENAMED[old]
            log.warning("the engine parameter %r is deprecated; use %r instead", old, new)
            if new in params:
                raise ConfigurationError(f"give {new!r} only, not also its old name {old!r}")
            params[new] = params.pop(old)
        model_names = {f.name for f in fields(ModelConfig)}
        engine_names = {f.name for f in fields(cls)} - {"model"}
        unknown = sorted(set(params) - model_names - engine_names)
        if unknown:
            raise ConfigurationError(
                f"unknown parameters {unknown}; model parameters: {sorted(model_names)}; "
                f"engine parameters: {sorted(engine_names)}"
            )
        model = ModelConfig(**{k: v for k, v in params.items() if k in model_names})
        rest = {k: v for k, v in params.items() if k in engine_names}
        return cls(model=model, **rest)


def merge_checkpoint_config(
    saved: EngineConfig, current: EngineConfig
) -> tuple[EngineConfig, list[str]]:
    """The configuration to resume a checkpoint with, and what differs from ``current``.

    The architecture (:data:`FROM_CHECKPOINT`: the network, what shapes the per-stream state,
    the optimisers' state) comes from ``saved``, since the weights and stream states were made
    for it; everything else (thresholds, cooldown, ``max_streams``, fit schedule...) from
    ``current``, the settings the process was started with. Each difference is one
    ``"name: ..."`` line.

    Examples
    --------
    >>> saved = EngineConfig(init="random", alert_cooldown=0).with_model(hidden_size=16)
    >>> current = EngineConfig(init="random", alert_cooldown=30).with_model(hidden_size=32)
    >>> merged, notes = merge_checkpoint_config(saved, current)
    >>> merged.model.hidden_size, merged.alert_cooldown
    (16, 30)
    >>> for note in notes:
    ...     print(note)
    model.hidden_size: checkpoint 16, settings 32 (the checkpoint wins)
    alert_cooldown: checkpoint 0, settings 30 (the settings win)
    """
    notes: list[str] = []
    model_current = asdict(current.model)
    if current.init == "random":  # a pretrained init takes its network from the weights file
        for key, value in asdict(saved.model).items():
            if model_current[key] != value:
                notes.append(
                    f"model.{key}: checkpoint {value!r}, settings {model_current[key]!r} "
                    "(the checkpoint wins)"
                )
    changes: dict[str, Any] = {}
    for f in fields(EngineConfig):
        if f.name == "model":
            continue
        old, new = getattr(saved, f.name), getattr(current, f.name)
        if old == new:
            continue
        if f.name in FROM_CHECKPOINT:
            notes.append(f"{f.name}: checkpoint {old!r}, settings {new!r} (the checkpoint wins)")
        else:
            notes.append(f"{f.name}: checkpoint {old!r}, settings {new!r} (the settings win)")
            changes[f.name] = new
    return replace(saved, **changes), notes
