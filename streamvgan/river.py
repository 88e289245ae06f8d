"""River adapters: the engine behind River's anomaly-detector and forecaster interfaces.

Thin on purpose: each adapter owns a one-stream :class:`~streamvgan.engine.StreamEngine`,
turns River's calls into engine events, and fine-tunes inline when a fit is due.
"""

from __future__ import annotations

import contextlib
import numbers

from river import base as river_base
from river.time_series.base import Forecaster

from streamvgan.engine import DEFAULT_FIELD, Cause, EngineConfig, Event, Scored, StreamEngine
from streamvgan.engine.values import check_value
from streamvgan.errors import InvalidInputError

_STREAM = "river"


class _EngineMixin:
    """Shared plumbing: the constructor both adapters take, lazy engine construction.

    Parameter names are :class:`~streamvgan.engine.EngineConfig`'s (and the service's). Three
    defaults differ from the engine's on purpose, because an adapter learns one stream, not
    thousands: ``warmup_events=256`` and ``fit_every=500`` (the engine's 400 and 1,000 count
    the events of all streams together; one stream's own events are all an adapter has, so
    it fits sooner and more often), and ``season_window=600`` (the engine's 0 saves 2.4 KB
    per stream in memory and in every changelog record, which one stream does not feel).
    """

    def __init__(
        self,
        seed: int = 0,
        warmup_events: int = 256,
        fit_every: int = 500,
        horizon: int = 12,
        adversarial: bool = True,
        variational: bool = True,
        season_window: int = 600,
        device: str = "cpu",
        **params,
    ) -> None:
        self.seed = seed
        self.warmup_events = warmup_events
        self.fit_every = fit_every
        self.horizon = horizon
        self.adversarial = adversarial
        self.variational = variational
        self.season_window = season_window
        self.device = device
        self.params = params
        self._check_params()
        self._engine: StreamEngine | None = None
        # score_one's computation, which learn_one of the same point (River's loop) reuses
        # instead of computing it again; the engine checks it still applies
        self._scored: Scored | None = None

    @classmethod
    def _unit_test_params(cls):
        yield {
            "init": "random",
            "warmup_events": 80,
            "first_fit_steps": 5,
            "fit_steps": 2,
            "hidden_size": 8,
        }

    @property
    def _is_stochastic(self) -> bool:
        return True

    seed: int
    warmup_events: int
    fit_every: int
    horizon: int
    adversarial: bool
    variational: bool
    season_window: int
    device: str
    params: dict

    def _engine_params(self) -> dict:
        return {
            "warmup_events": self.warmup_events,
            "fit_every": self.fit_every,
            "horizon": self.horizon,
            "adversarial": self.adversarial,
            "variational": self.variational,
            "season_window": self.season_window,
            **self.params,
        }

    @property
    def engine(self) -> StreamEngine:
        """The underlying engine (built on first use)."""
        if self._engine is None:
            self._engine = StreamEngine(
                EngineConfig.from_params(**self._engine_params()),
                seed=self.seed,
                device=self.device,
            )
        return self._engine

    def _check_params(self) -> None:
        EngineConfig.from_params(**self._engine_params())  # fail at construction, not first use

    @property
    def model_version(self) -> int:
        """How many times the weights have been fitted and swapped in (0: cold start)."""
        return 0 if self._engine is None else self.engine.model_version

    def _learn_event(self, event: Event) -> None:
        scored, self._scored = self._scored, None
        self.engine.process_columns([event], scored)  # no Score objects: nobody reads them
        self.engine.fine_tune()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_scored"] = None
        engine = state.pop("_engine")
        state["_engine_bytes"] = None if engine is None else engine.to_bytes()
        return state

    def __setstate__(self, state: dict) -> None:
        blob = state.pop("_engine_bytes")
        self.__dict__.update(state)
        self._engine = None if blob is None else StreamEngine.from_bytes(blob, device=self.device)


class VAEGANDetector(_EngineMixin, river_base.AnomalyDetector):
    """Online anomaly detector built on a recurrent VAE-GAN.

    Scores each observation (a dict of one or more numeric fields, in time order) in [0, 1]
    by how surprising it is: the most surprising of a model signal (from a recurrent
    variational autoencoder trained adversarially on the stream's own recent past), the jump
    and the level shift, each calibrated online against its own history. The recipe, with
    the cold start before the first fit (``warmup_events``): the project README, section
    "How the score is computed".

    Values must be real numbers within +-1e30
    (:data:`~streamvgan.engine.values.MAX_ABS_VALUE`): ``learn_one`` and ``score_one`` raise
    :class:`~streamvgan.errors.InvalidInputError` naming the field and value for NaN, an
    infinity, a larger magnitude or a non-number, and change no state. Raising, rather than
    skipping silently, because a skipped point would shift every later score without a trace.

    Parameters
    ----------
    seed
        Seeds the weights and all sampling; the same seed gives the same scores.
    warmup_events
        Observations before the first fit (256; the engine's 400 counts all its streams).
    fit_every
        Observations between fine-tunes (500; the engine's 1,000 counts all its streams).
    horizon
        Steps the forecast head predicts (used by :meth:`forecast` and :meth:`generate`).
    adversarial
        Train the window critic (False: plain recurrent VAE).
    variational
        Stochastic latents with a KL term (False: deterministic recurrent autoencoder).
    season_window
        Values kept to find a season for the jump signal and the forecast blend (0: off). On by
        default here (600: one stream, the 2.4 KB ring costs nothing); off (0) by default in
        the engine and the many-stream service, where it costs 2.4 KB per stream.
    device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    params
        Any other :class:`~streamvgan.engine.EngineConfig` or
        :class:`~streamvgan.nn.ModelConfig` field, e.g. ``hidden_size=64`` or
        ``cooldown_threshold=0.9994`` (the old names ``alert_threshold`` and
        ``anomaly_threshold`` still work, with a warning).

    Examples
    --------
    >>> import math
    >>> import streamvgan
    >>> detector = streamvgan.VAEGANDetector(seed=42, warmup_events=150, first_fit_steps=30)
    >>> scores = []
    >>> for t in range(300):
    ...     x = {"value": math.sin(t / 4) + (6.0 if t == 250 else 0.0)}
    ...     scores.append(detector.score_one(x))
    ...     detector.learn_one(x)
    >>> [t for t in range(200, 260) if scores[t] > 0.999][0]  # the first alarm is the spike
    250
    >>> max(scores[200:250]) < 0.999
    True
    >>> detector.model_version
    1
    >>> detector.score_one({"value": 20.0}) >= 0.9999994  # a new extreme, far beyond all seen
    True
    >>> detector.cause  # what drove the latest score_one, and in which field
    Cause(signal='extreme', field='value')

    References
    ----------
    Su et al. (2019) Robust anomaly detection for multivariate time series through stochastic
    recurrent neural network (OmniAnomaly). Geiger et al. (2020) TadGAN. Ahmad et al. (2017)
    Unsupervised real-time anomaly detection for streaming data.
    """

    def _event(self, x: dict) -> Event:
        if not isinstance(x, dict):
            raise InvalidInputError(
                f"x must be a dict of field -> number, got {type(x).__name__}: {x!r}"
            )
        return Event(_STREAM, x)

    def learn_one(self, x: dict) -> None:
        self._learn_event(self._event(x))

    def score_one(self, x: dict) -> float:
        self._scored = scored = self.engine.assess([self._event(x)])
        self._last_scored = scored.columns  # for .cause and .fields, after learn_one too
        return float(scored.columns.score[0])

    @property
    def cause(self) -> Cause | None:
        """What drove the latest :meth:`score_one`'s score: the signal (``"model"``,
        ``"jump"``, ``"level"``, or ``"extreme"`` for a value beyond the range seen) and the
        field (:class:`~streamvgan.engine.Cause`); None before any score and while no signal
        is counted yet (the first events)."""
        last = getattr(self, "_last_scored", None)
        return None if last is None else last.cause_of(0)

    @property
    def fields(self) -> dict[str, float] | None:
        """Each field's own score in the latest :meth:`score_one` (the largest of that field's
        signals, calibrated as the score is; the score is the largest of them), for an
        observation of several fields; None for one field, before any score and for the
        first observation (nothing learned yet, the score is 0.0)."""
        last = getattr(self, "_last_scored", None)
        return None if last is None else last.fields_of(0)

    def generate(self, horizon: int, n_samples: int) -> list[list[dict]]:
        """``n_samples`` sampled continuations of ``horizon`` steps, each a list of dicts."""
        samples = self.engine.generate(_STREAM, horizon, n_samples)
        names = self.engine.fields(_STREAM)
        return [[dict(zip(names, map(float, step))) for step in path] for path in samples]


class VAEGANForecaster(_EngineMixin, Forecaster):
    """Probabilistic multi-step forecaster built on a recurrent VAE-GAN.

    Learns one series online; :meth:`forecast` gives the mean of a Gaussian forecast head for
    each of the next steps (beyond the head's ``horizon``, the mean of sampled continuations),
    :meth:`forecast_quantiles` the quantile bands, and :meth:`generate` sampled trajectories.
    Until the first fit (``warmup_events``) it forecasts the last value (persistence), with
    bands from the running standard deviation. Exogenous ``x`` is accepted and ignored.
    ``learn_one`` raises :class:`~streamvgan.errors.InvalidInputError` for a ``y`` that is not
    a real number within +-1e30 (NaN, an infinity, 1e308), as the detector does.

    Parameters
    ----------
    seed
        Seeds the weights and all sampling.
    warmup_events
        Observations before the first fit.
    fit_every
        Observations between fine-tunes.
    horizon
        Steps the forecast head predicts directly.
    adversarial
        Train the window critic (False: plain recurrent VAE).
    variational
        Stochastic latents (False: deterministic recurrent autoencoder).
    season_window
        Values kept to find a season (0: off): with one found, the value one season back joins
        the forecast blend (and the jump signal looks one season back); see
        :class:`VAEGANDetector`.
    device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    params
        Any other :class:`~streamvgan.engine.EngineConfig` or
        :class:`~streamvgan.nn.ModelConfig` field.

    Examples
    --------
    >>> import math
    >>> import streamvgan
    >>> model = streamvgan.VAEGANForecaster(seed=42, warmup_events=200, first_fit_steps=150)
    >>> for t in range(400):
    ...     model.learn_one(10 + math.sin(2 * math.pi * t / 20))
    >>> forecast = model.forecast(horizon=5)
    >>> truth = [10 + math.sin(2 * math.pi * t / 20) for t in range(400, 405)]
    >>> max(abs(f - y) for f, y in zip(forecast, truth)) < 0.3
    True
    >>> bands = model.forecast_quantiles(horizon=5)
    >>> all(lo <= hi for lo, hi in zip(bands[0.1], bands[0.9]))
    True
    >>> len(model.generate(horizon=5, n_samples=3))
    3
    """

    def learn_one(self, y: float, x: dict | None = None) -> None:
        if x is not None and not isinstance(x, dict):
            raise InvalidInputError(f"x must be a dict or None, got {type(x).__name__}: {x!r}")
        if isinstance(y, numbers.Real) and not isinstance(y, int | float):  # e.g. Fraction
            with contextlib.suppress(OverflowError, ValueError):  # check_value names the value
                y = float(y)
        self._learn_event(Event(_STREAM, {DEFAULT_FIELD: check_value(y, "y")}))

    def _check_horizon(self, horizon: int) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise InvalidInputError(f"horizon must be a positive int, got {horizon!r}")

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        return self.forecast_quantiles(horizon, mean=True)["mean"]

    def forecast_quantiles(self, horizon: int, mean: bool = False) -> dict:
        """Quantile bands (levels from ``quantiles``, by default 0.1, 0.5, 0.9) for the next
        ``horizon`` steps: ``{0.1: [...], 0.5: [...], 0.9: [...]}`` (plus ``"mean"`` if asked)."""
        self._check_horizon(horizon)
        if self._engine is None or _STREAM not in self.engine.state:
            zeros = [0.0] * horizon
            out: dict = {q: list(zeros) for q in self.engine.config.quantiles}
            if mean:
                out["mean"] = list(zeros)
            return out
        fc = self.engine.forecast([_STREAM])[0]
        head = min(horizon, fc.mean.shape[0])
        out = {q: [float(v) for v in arr[:head, 0]] for q, arr in fc.quantiles.items()}
        if mean:
            out["mean"] = [float(v) for v in fc.mean[:head, 0]]
        if horizon > head:  # beyond the head: summarise sampled continuations
            paths = self.engine.generate(_STREAM, horizon, 200)[:, head:, 0]
            import numpy as np

            for q in list(out):
                level = 0.5 if q == "mean" else q
                extra = paths.mean(0) if q == "mean" else np.quantile(paths, level, axis=0)
                out[q] += [float(v) for v in extra]
        return out

    def generate(self, horizon: int, n_samples: int) -> list[list[float]]:
        """``n_samples`` sampled continuations of the series, each ``horizon`` floats long."""
        self._check_horizon(horizon)
        return [
            [float(v) for v in path[:, 0]]
            for path in self.engine.generate(_STREAM, horizon, n_samples)
        ]
