"""StreamEngine: one recurrent VAE-GAN serving many streams online.

Every stream keeps its own small state (GRU state, online normaliser, replay buffer, score
statistics: :mod:`~streamvgan.engine.state`); all streams share one set of weights.
:meth:`StreamEngine.process` advances every stream that received events in one batched network
call per *round* (the k-th event of each stream in the batch), so the cost per event does not
grow with Python-level calls per stream.

This module validates input, groups rounds, holds the lock and delegates: the score is
computed in :mod:`~streamvgan.engine.signals` (the recipe: README "How the score is computed")
and learned in :mod:`~streamvgan.engine.learn`; forecasts are made in
:mod:`~streamvgan.engine.forecast`; the network is held and fine-tuned in
:mod:`~streamvgan.engine.network` (training loop: :mod:`~streamvgan.engine.training`); files
are written by :mod:`~streamvgan.engine.persist`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamvgan.engine import forecast as forecasting
from streamvgan.engine import network, persist
from streamvgan.engine.batching import ScoreColumns, Scored, admit, known_rows
from streamvgan.engine.config import EngineConfig
from streamvgan.engine.learn import STEP_ARRAYS, learn
from streamvgan.engine.network import ServingNetwork, resolve_device
from streamvgan.engine.scalar import compute_one, learn_one
from streamvgan.engine.signals import COMPONENTS, ScoreBatch, SignalScorer, normal_quantile
from streamvgan.engine.state import StateTable
from streamvgan.engine.training import FitReport, TrainingWindows
from streamvgan.engine.types import Event, Forecast, ForecastColumns, Score
from streamvgan.errors import CheckpointError
from streamvgan.nn.model import RecurrentVAEGAN

__all__ = ["COMPONENTS", "Scored", "StreamEngine", "resolve_device"]

log = logging.getLogger(__name__)


class StreamEngine:
    """Anomaly scores, forecasts and sampled continuations for many streams, learned online.

    How a score is computed: README "How the score is computed".

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

    #: score one value per call in Python floats (streamvgan.engine.scalar), not numpy: equal
    #: results, three times faster at one event per call; False only to compare the two
    scalar_path = True

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        config = config or EngineConfig()
        weights = None
        if config.init != "random":  # the architecture comes from the weights file
            config, weights = network.initial_weights(config)
        self.config, self.seed, self.device = config, seed, resolve_device(device)
        self.state = StateTable.for_config(config)
        self._lock = threading.RLock()
        self.net = ServingNetwork(config, seed, self.device, self.state, self._lock, weights)
        self.scorer = SignalScorer(config, self.device)
        self.events_seen = 0
        self._eviction_listeners: list[Callable[[str], None]] = []
        self.state.on_evict = self._evicted
        self._z = {q: normal_quantile(q) for q in config.quantiles}
        self._mutations = 0  # bumped by every state change (revision)

    def _evicted(self, stream: str) -> None:
        for listener in self._eviction_listeners:
            listener(stream)

    # -- properties --------------------------------------------------------------------------
    @property
    def model(self) -> RecurrentVAEGAN:
        """The serving network (before the first fit, random weights that are not used)."""
        return self.net.model

    @property
    def model_version(self) -> int:
        """How many fits the serving weights come from (0: cold start, no network yet)."""
        return self.net.version

    n_streams = property(lambda self: len(self.state))
    evictions = property(lambda self: self.state.evictions)
    #: streams whose state turned non-finite and was reset (StateTable.reset_nonfinite)
    streams_reset = property(lambda self: self.state.streams_reset)

    @property
    def revision(self) -> int:
        """A number that changes whenever the engine's state or weights change (compare two
        readings to know whether a checkpoint would differ from the last one)."""
        return self._mutations + self.net.swaps

    @property
    def fields_of(self) -> Mapping[str, tuple[str, ...]]:
        """Each known stream's field names, sorted."""
        return self.state.fields

    def raise_version_floor(self, version: int) -> None:
        """Make the next fine-tune's version greater than ``version``: a process that lost its
        weights (killed before its first checkpoint) learns from restored stream states which
        versions it already published, and keeps version numbers monotonic."""
        with self._lock:
            self.net.version_floor = max(self.net.version_floor, int(version))

    def add_eviction_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(stream)`` for each stream evicted as least recently seen (inside
        :meth:`process`, under the engine's lock), so callers can drop what they keep per
        stream and stay bounded by ``max_streams`` too."""
        self._eviction_listeners.append(listener)

    def streams(self) -> list[str]:
        return list(self.state.streams)

    def fields(self, stream: str) -> list[str]:
        return self.state.channels(stream)[0]

    def state_bytes_per_stream(self) -> int:
        """Bytes of state one univariate stream holds (arrays, not Python bookkeeping)."""
        return self.state.bytes_per_channel()

    # -- the online step ---------------------------------------------------------------------
    def process(self, events: Sequence[Event], scored: Scored | None = None) -> list[Score]:
        """Score, then learn from, ``events`` (any mix of streams, in order per stream).

        ``scored``: what :meth:`assess` returned for the same events, if nothing changed the
        engine since; it saves computing the scores again. Raises :class:`InvalidInputError`
        naming the first bad event before any state changes.
        """
        return self.process_columns(events, scored).scores()

    def process_columns(
        self, events: Sequence[Event], scored: Scored | None = None
    ) -> ScoreColumns:
        """:meth:`process`, with the scores as arrays (one row per event) instead of one
        :class:`Score` object per event: for callers that handle many events per call."""
        with self._lock:
            cfg = self.config
            batch = admit(events, self.state, cfg.field_mode, cfg.model.n_features)
            self._mutations += batch.new_streams
            columns = ScoreColumns.zeros(
                events, self.model_version, batch.streams, self.state.fields
            )
            for members, slots, values, starts in batch.rounds():
                columns.fill(members, self._step(slots, values, True, scored), starts)
            self.events_seen += len(events)
            return columns

    def score(self, events: Sequence[Event]) -> list[Score]:
        """Score each event as the next event of its stream, changing no state.

        A stream never seen before scores 0.0 (nothing to compare against)."""
        return self.assess(events).scores

    def assess(self, events: Sequence[Event]) -> Scored:
        """:meth:`score`, keeping the computation for a following :meth:`process`."""
        with self._lock:
            st, cfg = self.state, self.config
            rows = known_rows(events, st, cfg.field_mode, cfg.model.n_features)
            columns = ScoreColumns.zeros(events, self.model_version, None, st.fields)
            batch = None
            if rows is not None:  # score() never advances state: a stream's events independent
                known, slots, values, starts = rows
                batch = self._step(slots, values, False, None)
                columns.fill(known, batch, starts)
            return Scored(columns, self.revision, batch, self)

    def _step(
        self, slots: np.ndarray, values: np.ndarray, learning: bool, scored: Scored | None
    ) -> ScoreBatch:
        """Score the rows (reusing ``scored``'s computation if it applies) and learn them."""
        st, cfg, net = self.state, self.config, self.net
        one = self.scalar_path and values.shape == (1, 1)  # one value: Python floats
        b = scored.batch_for(self, self.revision, slots, values) if scored else None
        critic = net.critic if cfg.critic_weight > 0 else None  # weighted 0: not run at all
        if b is None and one:
            on, x = self.scorer.signal_on.tolist(), values.item(0, 0)
            b = compute_one(cfg, st, int(slots[0]), x, net.scoring, critic, on, self.device)
        elif b is None:
            b = self.scorer.compute(st, slots, values, net.scoring, critic)
        if learning:
            self._mutations += 1
            if not one:
                learn(cfg, st, b)
                self._reset_nonfinite(slots, STEP_ARRAYS, extra=~np.isfinite(b.xn).all(-1))
            elif not learn_one(cfg, st, b):  # it checks what it wrote: the guard in floats
                self._reset_nonfinite(slots, STEP_ARRAYS, extra=np.array([True]))
        return b

    def _reset_nonfinite(
        self,
        slots: np.ndarray,
        names: Sequence[str] | None = None,
        extra: np.ndarray | None = None,
    ) -> None:
        """:meth:`StateTable.reset_nonfinite`, a state change like any other."""
        if self.state.reset_nonfinite(slots, names, extra):
            self._mutations += 1

    # -- forecasts and continuations (streamvgan.engine.forecast) ---------------------------
    def forecast(self, streams: Sequence[str]) -> list[Forecast]:
        """Mean and quantiles of the next ``config.horizon`` values of each stream.

        Before the first fit: the last value, with quantiles from the running standard
        deviation (a persistence forecast)."""
        return self.forecast_columns(streams).forecasts()

    def forecast_columns(self, streams: Sequence[str]) -> ForecastColumns:
        """:meth:`forecast`, as arrays (one row per channel) instead of one :class:`Forecast`
        object per stream: for callers that handle many streams per call."""
        with self._lock:
            cfg, st, v = self.config, self.state, self.model_version
            return forecasting.forecast_columns(cfg, st, list(streams), v, self._z)

    def generate(self, stream: str, horizon: int, n_samples: int) -> np.ndarray:
        """``n_samples`` sampled continuations (n_samples, horizon, n_fields) in original units,
        drawn by running the prior, decoder and GRU forward from the stream's current state.

        Before the first fit: independent draws around the last value with the running
        standard deviation."""
        with self._lock:
            net, args = self.net, (horizon, n_samples, self.net.sample_gen)
            return forecasting.continuations(self.config, self.state, stream, net.scoring, *args)

    def generate_many(
        self, streams: Sequence[str], horizon: int, n_samples: int
    ) -> list[np.ndarray]:
        """:meth:`generate` of each of ``streams``, from one run of the network for all of
        them (what the service does with the streams due a continuation in a poll: one
        stream at a time, 1,000 of them took ~3 s). For one stream the same draws as
        :meth:`generate`; for several, the same distribution with other draws."""
        with self._lock:
            net, args = self.net, (horizon, n_samples, self.net.sample_gen)
            cfg, st = self.config, self.state
            return forecasting.continuations_of(cfg, st, list(streams), net.scoring, *args)

    # -- fine-tuning (streamvgan.engine.network) --------------------------------------------
    def fine_tune_due(self) -> bool:
        return self.net.due(self.events_seen)

    def sample_windows(self, n_windows: int) -> TrainingWindows | None:
        """Up to ``n_windows`` training windows from the replay buffers (None: none yet)."""
        return self.net.sample_windows(n_windows)

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
        return self.net.fit(lambda: self.events_seen, steps, should_stop)

    def install_weights(
        self, weights: Mapping[str, torch.Tensor], version: int | None = None
    ) -> int:
        """Swap ``weights`` in atomically, re-warm every stream's state from its replay buffer
        so it matches them, and return the new model version."""
        return self.net.install(weights, version)

    def export_weights(self) -> bytes:
        """The serving weights and model config as bytes (for a model topic)."""
        return self.net.to_bytes()

    def import_weights(self, data: bytes, version: int) -> None:
        """Install weights from :meth:`export_weights` bytes as ``version``."""
        self.net.install_bytes(data, version)

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds, as plain data: configuration, seed, counters,
        network and trainer, every stream's state (:meth:`StateTable.state_dict`)."""
        with self._lock:
            return {
                "engine_config": self.config.to_dict(),
                "seed": self.seed,
                "events_seen": self.events_seen,
                **self.net.state_dict(),
                **self.state.state_dict(),
            }

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Any],
        device: str | torch.device = "cpu",
        what: str = "state",
        settings: EngineConfig | None = None,
    ) -> StreamEngine:
        """An engine rebuilt from :meth:`state_dict`'s data; CheckpointError (naming
        ``what``) if it does not fit together. With ``settings``, only the architecture comes
        from the saved state and everything else from ``settings``
        (:func:`~streamvgan.engine.config.merge_checkpoint_config`; one log line lists what
        differs)."""
        config = persist.engine_config(state, what, settings)
        # the weights come from the checkpoint: the initial ones need not be read (nor exist)
        engine = cls(replace(config, init="random"), seed=int(state["seed"]), device=device)
        engine.config = config
        try:
            engine.net.load_state_dict(state)
            engine.events_seen = int(state["events_seen"])
            # a state saved non-finite starts again as new
            engine._reset_nonfinite(engine.state.load_state_dict(state))
        except CheckpointError:
            raise
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{what} is incomplete or inconsistent: {exc!r}") from exc
        return engine

    def save(self, directory: str | Path) -> Path:
        """Write weights, configuration, normalisers and every stream's state to ``directory``."""
        with self._lock:
            data = persist.dumps(self.state_dict())
            return persist.save(data, Path(directory), self.model_version, self.n_streams)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        settings: EngineConfig | None = None,
    ) -> StreamEngine:
        """Rebuild an engine from :meth:`save`'s directory (``torch.load(weights_only=True)``);
        with ``settings``, only the architecture comes from the checkpoint."""
        data, what = persist.read(Path(directory))
        return cls.from_bytes(data, device, what, settings)

    def to_bytes(self) -> bytes:
        """The whole engine as bytes (what :meth:`save` writes), e.g. for pickling."""
        return persist.dumps(self.state_dict())

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        device: str | torch.device = "cpu",
        what: str = "engine bytes",
        settings: EngineConfig | None = None,
    ) -> StreamEngine:
        return cls.from_state_dict(persist.loads(data, what), device, what, settings)

    def __getstate__(self) -> dict:
        return {"bytes": self.to_bytes(), "device": str(self.device)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(StreamEngine.from_bytes(state["bytes"], state["device"]).__dict__)

    def export_stream(self, stream: str) -> bytes | None:
        """One stream's state as bytes (for a changelog); None if the stream is unknown."""
        with self._lock:
            record = self.state.record(stream, self.model_version)
            return None if record is None else persist.stream_to_bytes(record)

    def export_streams(self, streams: Sequence[str]) -> list[bytes | None]:
        """:meth:`export_stream` of each of ``streams`` (equal bytes), gathering the state of
        all of them at once."""
        with self._lock:
            records = self.state.records(streams, self.model_version)
            return [None if r is None else persist.stream_to_bytes(r) for r in records]

    def drop_stream(self, stream: str) -> bool:
        """Forget a stream's state (e.g. its partition moved to another replica)."""
        with self._lock:
            if stream not in self.state:
                return False
            self._mutations += 1
            self.state.remove_stream(stream)
            return True

    def import_stream(self, stream: str, data: bytes) -> None:
        """Restore one stream's state from :meth:`export_stream` bytes (replacing any)."""
        with self._lock:
            self._mutations += 1
            record = persist.stream_from_bytes(data, stream)
            try:
                slots = self.state.restore_record(record)
            except ValueError as exc:
                raise CheckpointError(f"state record of stream {stream!r}: {exc}") from exc
            # the state was written under that version: a fresh fit here must number above it
            self.raise_version_floor(record.model_version)
            if record.model_version != self.model_version and self.model_version > 0:
                self.net.rewarm(slots)
            self._reset_nonfinite(slots)
