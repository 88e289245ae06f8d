"""EngineConfig: everything the many-stream engine needs besides the network's architecture."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace

from streamvgan.errors import ConfigurationError
from streamvgan.nn.model import ModelConfig

FIELD_MODES = ("channels", "joint")
#: detection signals whose calibrated maximum is the anomaly score (see StreamEngine)
SIGNALS = ("model", "jump", "level")
#: fields of older versions that a saved configuration may still hold; ignored when loading
_RETIRED = {"history_size"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Settings of :class:`streamvgan.engine.StreamEngine` (defaults work out of the box).

    ``field_mode="channels"`` models each field of a stream as its own univariate channel
    sharing the weights (any number of fields per stream, the score of an event is its most
    anomalous channel); ``"joint"`` feeds all ``model.n_features`` fields of a stream to the
    network together, so it also models how they move with each other.

    Examples
    --------
    >>> config = EngineConfig.from_params(hidden_size=16, warmup_events=100)
    >>> config.model.hidden_size, config.warmup_events, config.horizon
    (16, 100, 12)
    >>> EngineConfig(field_mode="both")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamvgan.errors.ConfigurationError: field_mode must be one of (...), got 'both'
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    field_mode: str = "channels"
    max_streams: int = 100_000  # least-recently-seen streams beyond this are evicted
    replay_size: int = 256  # points of recent history kept per channel
    window: int = 64  # length of the training windows
    burn_in: int = 16  # steps of each window that only warm the GRU state
    warmup_events: int = 400  # events seen before the first fit (cold-start fallback until then)
    fit_every: int = 1000  # events between fine-tunes
    first_fit_steps: int = 300  # optimiser steps of the first fit
    fit_steps: int = 40  # optimiser steps of each later fine-tune
    batch_size: int = 32  # windows per optimiser step
    learning_rate: float = 3e-3
    critic_learning_rate: float = 1e-3
    normaliser_halflife: float = 1000.0  # events; how fast level and scale follow the data
    relevel_after: int = 16  # this many values in a row beyond 4 sd on one side: new level
    score_halflife: float = 500.0  # events; how fast the component statistics adapt
    signals: tuple[str, ...] = SIGNALS  # detection signals the score takes the maximum over
    model_signal_weight: float = 0.6  # the model signal's z is multiplied by this before the
    # maximum (at 1.0 it raised more false alarms on NAB than the jump and level signals)
    level_halflife: float = 3.0  # events; the short-run level of the `level` signal
    season_window: int = 0  # values kept to find a season for the jump signal (0: off; 600 in
    # the River adapters): 4 bytes per value and stream, in memory and in every changelog record
    season_min_correlation: float = 0.8  # autocorrelation at the season needed to use it
    smoothing: int = 10  # values of each signal averaged before calibration
    calibration_halflife: float = 2000.0  # events; memory of the smoothed-score statistics
    min_history: int = 20  # events before a stream gets non-zero scores
    range_tolerance: float | None = 0.05  # beyond the seen range by this fraction of it: 1.0
    alert_threshold: float = 0.9994  # a score at or above starts the alert cooldown
    alert_cooldown: int = 0  # events after an alert whose scores are capped at `cooldown_cap`
    cooldown_cap: float = 0.5
    surprise_weight: float = 1.0
    reconstruction_weight: float = 1.0
    critic_weight: float = 0.25
    anomaly_threshold: float = 0.999  # scores at or above are learned at `anomalous_weight`
    anomalous_weight: float = 0.1
    clip: float = 20.0  # normalised values are clipped to +-clip
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    forecast_blend: bool = True  # weigh the network's forecast against the last value
    init: str = "random"  # the network's first weights: "random", "pretrained" (the weights
    # shipped in the package, docs/pretraining.md) or the path of a `streamvgan pretrain` file

    @property
    def horizon(self) -> int:
        return self.model.horizon

    def __post_init__(self) -> None:
        if self.field_mode not in FIELD_MODES:
            raise ConfigurationError(
                f"field_mode must be one of {FIELD_MODES}, got {self.field_mode!r}"
            )
        if self.field_mode == "channels" and self.model.n_features != 1:
            raise ConfigurationError(
                "field_mode='channels' needs model.n_features=1 (each field is its own channel);"
                f" got n_features={self.model.n_features}. Use field_mode='joint' instead."
            )
        positive_ints = [
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
        ]
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"EngineConfig.{name} must be a positive int, got {value!r}"
                )
        need = self.burn_in + max(self.model.horizon, self.model.critic_window) + 1
        if self.window < need:
            raise ConfigurationError(
                f"EngineConfig.window={self.window} is too short: it needs at least burn_in + "
                f"max(horizon, critic_window) + 1 = {need}"
            )
        if self.replay_size < self.window:
            raise ConfigurationError(
                f"EngineConfig.replay_size={self.replay_size} must be >= window={self.window}"
            )
        if not all(0.0 < q < 1.0 for q in self.quantiles):
            raise ConfigurationError(f"quantiles must lie in (0, 1), got {self.quantiles!r}")
        if not isinstance(self.alert_cooldown, int) or self.alert_cooldown < 0:
            raise ConfigurationError(
                f"EngineConfig.alert_cooldown must be an int >= 0, got {self.alert_cooldown!r}"
            )
        if not isinstance(self.min_history, int) or self.min_history < 0:
            raise ConfigurationError(
                f"EngineConfig.min_history must be an int >= 0, got {self.min_history!r}"
            )
        if not self.calibration_halflife > 0:
            raise ConfigurationError(
                f"EngineConfig.calibration_halflife must be > 0, got {self.calibration_halflife!r}"
            )
        if self.range_tolerance is not None and not self.range_tolerance >= 0:
            raise ConfigurationError(
                "EngineConfig.range_tolerance must be >= 0 or None (off), got "
                f"{self.range_tolerance!r}"
            )
        for name in ("alert_threshold", "cooldown_cap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigurationError(
                    f"EngineConfig.{name} must be in [0, 1], got {getattr(self, name)!r}"
                )
        signals = self.signals
        if isinstance(signals, str):  # "jump,level", as --engine-param signals=jump,level gives
            signals = [name.strip() for name in signals.split(",") if name.strip()]
        signals = tuple(signals) if isinstance(signals, (list, tuple)) else ()
        if (
            not signals
            or any(s not in SIGNALS for s in signals)
            or len(set(signals)) != len(signals)
        ):
            raise ConfigurationError(
                f"EngineConfig.signals must be a non-empty selection of {SIGNALS} without "
                f"repeats, got {self.signals!r}"
            )
        object.__setattr__(self, "signals", signals)
        if not isinstance(self.forecast_blend, bool):
            raise ConfigurationError(
                f"EngineConfig.forecast_blend must be true or false, got {self.forecast_blend!r}"
            )
        if not isinstance(self.season_window, int) or not (
            self.season_window == 0 or self.season_window >= 16
        ):
            raise ConfigurationError(
                "EngineConfig.season_window must be 0 (off) or an int >= 16,"
                f" got {self.season_window!r}"
            )
        if not 0.0 < self.season_min_correlation <= 1.0:
            raise ConfigurationError(
                "EngineConfig.season_min_correlation must be in (0, 1], got "
                f"{self.season_min_correlation!r}"
            )
        if isinstance(self.model_signal_weight, bool) or not (
            isinstance(self.model_signal_weight, (int, float))
            and 0.0 < self.model_signal_weight <= 10.0
        ):
            raise ConfigurationError(
                "EngineConfig.model_signal_weight must be a number in (0, 10], got "
                f"{self.model_signal_weight!r}; use signals=jump,level to leave the model out"
            )
        if not self.level_halflife > 0:
            raise ConfigurationError(
                f"EngineConfig.level_halflife must be > 0, got {self.level_halflife!r}"
            )
        if not 0.0 < self.anomaly_threshold <= 1.0:
            raise ConfigurationError(
                f"anomaly_threshold must be in (0, 1], got {self.anomaly_threshold!r}"
            )
        if not isinstance(self.init, str) or not self.init:
            raise ConfigurationError(
                "EngineConfig.init must be 'random', 'pretrained' or the path of a weights "
                f"file made by `streamvgan pretrain`, got {self.init!r}"
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
        data = dict(data)
        for name in _RETIRED & set(data):
            log.warning("ignoring the retired EngineConfig field %r (%r)", name, data.pop(name))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(f"unknown EngineConfig fields {unknown}")
        model = ModelConfig.from_dict(data.pop("model", {}))
        if "quantiles" in data:
            data["quantiles"] = tuple(data["quantiles"])
        return cls(model=model, **data)

    @classmethod
    def from_params(cls, **params) -> EngineConfig:
        """Build from a flat mapping where model fields (``hidden_size``, ``adversarial``...)
        and engine fields sit side by side, as the River adapters receive them."""
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
        if "quantiles" in rest:
            rest["quantiles"] = tuple(rest["quantiles"])
        return cls(model=model, **rest)
