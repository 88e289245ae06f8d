"""StreamEngine: one recurrent VAE-GAN serving many streams online.

Every stream keeps its own small state (GRU state, online normaliser, replay buffer, score
statistics: :mod:`~streamvgan.engine.state`); all streams share one set of weights.
:meth:`StreamEngine.process` advances every stream that received events in one batched network
call per *round* (the k-th event of each stream in the batch), so the cost per event does not
grow with Python-level calls per stream.

This module validates input, groups rounds, holds the lock and delegates: the score is
computed in :mod:`~streamvgan.engine.signals` (the recipe: README "How the score is computed"),
learned in :mod:`~streamvgan.engine.learn`, forecasts in :mod:`~streamvgan.engine.forecast`,
the network is trained in :mod:`~streamvgan.engine.training` and files are written by
:mod:`~streamvgan.engine.persist`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamvgan.engine import forecast as forecasting
from streamvgan.engine import network, persist
from streamvgan.engine.batching import channel_rows, rounds, to_scores
from streamvgan.engine.config import EngineConfig
from streamvgan.engine.learn import STEP_ARRAYS, learn
from streamvgan.engine.network import resolve_device
from streamvgan.engine.signals import COMPONENTS, ScoreBatch, SignalScorer, normal_quantile
from streamvgan.engine.state import StateTable
from streamvgan.engine.training import FitReport, Trainer, TrainingWindows, sample_windows
from streamvgan.engine.types import Event, Forecast, Score
from streamvgan.engine.validate import validate_event
from streamvgan.errors import CheckpointError, ConfigurationError, InvalidInputError
from streamvgan.nn.model import RecurrentVAEGAN

__all__ = ["COMPONENTS", "Scored", "StreamEngine", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """Scores from :meth:`StreamEngine.assess`, with the computation behind them: passed to
    :meth:`StreamEngine.process` with the same events before anything else changed the
    engine, it is learned from instead of computed again (River's score_one, learn_one)."""

    scores: list[Score]
    revision: int
    batch: ScoreBatch | None
    engine: StreamEngine | None = field(default=None, repr=False, compare=False)


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
            config, weights = network.initial_weights(config)
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
        self.scorer = SignalScorer(cfg, self.device)
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
        self.state.on_evict = lambda stream: [f(stream) for f in self._eviction_listeners]
        self._lock = threading.RLock()
        self._train_lock = threading.Lock()
        self._z = {q: normal_quantile(q) for q in cfg.quantiles}
        self._mutations = 0  # bumped by every state change (revision)
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

    @property
    def fields_of(self) -> Mapping[str, tuple[str, ...]]:
        """Each known stream's field names, sorted."""
        return self.state.fields

    def streams(self) -> list[str]:
        return list(self.state.streams)

    def fields(self, stream: str) -> list[str]:
        if stream not in self.fields_of:
            raise InvalidInputError(f"unknown stream {stream!r}: no events seen for it yet")
        return list(self.fields_of[stream])

    def state_bytes_per_stream(self) -> int:
        """Bytes of state one univariate stream holds (arrays, not Python bookkeeping)."""
        return self.state.bytes_per_channel()

    def _validate(self, event: Event, seen: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
        cfg = self.config
        known = lambda stream: seen.get(stream) or self.fields_of.get(stream)  # noqa: E731
        return validate_event(event, known, cfg.field_mode, cfg.model.n_features)

    # -- the online step ---------------------------------------------------------------------
    def process(self, events: Sequence[Event], scored: Scored | None = None) -> list[Score]:
        """Score, then learn from, ``events`` (any mix of streams, in order per stream).

        ``scored``: what :meth:`assess` returned for the same events, if nothing changed the
        engine since; it saves computing the scores again. Raises :class:`InvalidInputError`
        naming the first bad event before any state changes.
        """
        with self._lock:
            seen: dict[str, tuple[str, ...]] = {}
            for event in events:
                seen.setdefault(event.stream, self._validate(event, seen))
            batch_streams = set(seen)
            for stream, names in seen.items():
                if stream not in self.state:
                    self._mutations += 1
                    keys = list(names) if self.config.field_mode == "channels" else ["*"]
                    self.state.add_stream(stream, keys, names, protect=batch_streams)
                else:
                    self.state.touch(stream)
            results: list[Score | None] = [None] * len(events)
            for members in rounds(events):
                for i, score in zip(members, self._run(events, members, True, scored)[0]):
                    results[i] = score
            self.events_seen += len(events)
            return results  # type: ignore[return-value]

    def score(self, events: Sequence[Event]) -> list[Score]:
        """Score each event as the next event of its stream, changing no state.

        A stream never seen before scores 0.0 (nothing to compare against)."""
        return self.assess(events).scores

    def assess(self, events: Sequence[Event]) -> Scored:
        """:meth:`score`, keeping the computation for a following :meth:`process`."""
        with self._lock:
            for event in events:
                self._validate(event, {})
            known = [i for i, e in enumerate(events) if e.stream in self.state]
            zeros = dict.fromkeys(COMPONENTS, 0.0)
            v = self.model_version
            results = [Score(e.stream, 0.0, 0.0, dict(zeros), v, False, e.ts) for e in events]
            # score() never advances state, so events of the same stream are independent
            scores, batch = self._run(events, known, False, None)
            for i, score in zip(known, scores):
                results[i] = score
            return Scored(results, self._mutations, batch, self)

    def _run(
        self, events: Sequence[Event], members: list[int], learning: bool, scored: Scored | None
    ) -> tuple[list[Score], ScoreBatch | None]:
        if not members:
            return [], None
        st = self.state
        channels = self.config.field_mode == "channels"
        slots, values, starts = channel_rows(events, members, st.streams, st.fields, channels)
        b = self._reusable(scored, slots, values)
        if b is None:
            model = self.model if self.model_version > 0 else None
            b = self.scorer.compute(st, slots, values, model, self._critic)
        if learning:
            self._mutations += 1
            learn(self.config, st, b)
            self._reset_nonfinite(slots, STEP_ARRAYS, extra=~np.isfinite(b.xn).all(-1))
        return to_scores(events, members, b, starts, self.model_version), b

    def _reusable(
        self, scored: Scored | None, slots: np.ndarray, values: np.ndarray
    ) -> ScoreBatch | None:
        """``scored``'s batch if it was computed by this engine, in its current state, for
        exactly these rows."""
        if scored is None or scored.engine is not self or scored.revision != self._mutations:
            return None
        b = scored.batch
        if b is None or b.slots.tobytes() != slots.tobytes():
            return None
        return b if b.values.tobytes() == values.tobytes() else None

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
        streams = self.state.reset_nonfinite(slots, names, extra)
        if not streams:
            return 0
        self._mutations += 1
        self.streams_reset += len(streams)
        log.warning(
            "reset the state of %d streams that turned non-finite (NaN or inf), e.g. "
            "%r; they start again as new streams",
            len(streams),
            streams[0],
        )
        return len(streams)

    # -- forecasts and continuations ---------------------------------------------------------
    def _stream_slots(self, stream: str) -> tuple[list[str], np.ndarray]:
        slots = self.state.slots_of(stream)
        if slots is None:
            raise InvalidInputError(f"unknown stream {stream!r}: no events seen for it yet")
        names = list(self.state.fields[stream])
        return names, np.asarray(list(slots.values()), dtype=np.int64)

    def forecast(self, streams: Sequence[str]) -> list[Forecast]:
        """Mean and quantiles of the next ``config.horizon`` values of each stream.

        Before the first fit: the last value, with quantiles from the running standard
        deviation (a persistence forecast)."""
        with self._lock:
            out = []
            for stream in streams:
                names, slots = self._stream_slots(stream)
                out.append(
                    forecasting.forecast(
                        self.config, self.state, stream, names, slots, self.model_version, self._z
                    )
                )
            return out

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
            _, slots = self._stream_slots(stream)
            model = self.model if self.model_version > 0 else None
            return forecasting.continuations(
                self.config, self.state, slots, model, horizon, n_samples, self._sample_gen,
                self.device,
            )  # fmt: skip

    # -- fine-tuning -------------------------------------------------------------------------
    def fine_tune_due(self) -> bool:
        cfg = self.config
        if self.model_version == 0:
            return self.events_seen >= cfg.warmup_events
        return self.events_seen - self._last_fit_events >= cfg.fit_every

    def sample_windows(self, n_windows: int) -> TrainingWindows | None:
        """Up to ``n_windows`` training windows from the replay buffers (None: none yet)."""
        cfg = self.config
        with self._lock:
            rng = self.trainer.rng
            return sample_windows(self.state, rng, n_windows, cfg.window, cfg.replay_size)

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
            duration = time.perf_counter() - start
            if losses is None:  # asked to stop: discard the partial fit
                log.info("fine-tune interrupted after %.2fs; weights unchanged", duration)
                return None
            version = self.install_weights(self.trainer.weights())
            self._last_fit_events = events_at_start
            rounded = {k: round(v, 3) for k, v in losses.items()}
            log.info(
                "fine-tune -> model_version=%d steps=%d windows=%d %.2fs losses=%s",
                *(version, steps, len(windows), duration, rounded),
            )
            return FitReport(version, steps, duration, losses, len(windows))

    def install_weights(
        self, weights: Mapping[str, torch.Tensor], version: int | None = None
    ) -> int:
        """Swap ``weights`` in atomically, re-warm every stream's state from its replay buffer
        so it matches them, and return the new model version."""
        new_model, critic = network.build(self.config.model, weights, self.device)
        with self._lock:
            was_cold = self.model_version == 0
            self._mutations += 1
            self.model, self._critic = new_model, critic
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

    def _rewarm(self, slots: np.ndarray | None = None) -> None:
        used = self.state.used_slots() if slots is None else slots
        network.rewarm(self.model, self.state, used, self.config.window, self.device)
        self._reset_nonfinite(used, ("h", "f_mean", "f_scale"))

    def export_weights(self) -> bytes:
        """The serving weights and model config as bytes (for a model topic)."""
        with self._lock:
            return network.weights_to_bytes(self.config.model, self.model, self.model_version)

    def import_weights(self, data: bytes, version: int) -> None:
        """Install weights from :meth:`export_weights` bytes as ``version``."""
        weights = network.weights_from_bytes(data, self.config.model)
        self.trainer.model.load_state_dict(weights)
        self.install_weights(weights, version=version)

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds, as plain data: configuration, seed, weights, trainer,
        counters, and every stream's rows of state (least recently seen first)."""
        with self._lock:
            st = self.state
            order = [slot for slots in st.streams.values() for slot in slots.values()]
            return {
                "engine_config": self.config.to_dict(),
                "seed": self.seed,
                "weights": self.model.state_dict(),
                "trainer": self.trainer.state_dict(),
                "model_version": self.model_version,
                "events_seen": self.events_seen,
                "last_fit_events": self._last_fit_events,
                "evictions": st.evictions,
                "sample_generator": self._sample_gen.get_state(),
                "streams": list(st.streams),
                "fields": [list(st.fields[s]) for s in st.streams],
                "keys": [list(slots) for slots in st.streams.values()],
                "arrays": st.rows(np.asarray(order, dtype=np.int64)),
            }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], device: str | torch.device = "cpu", what: str = "state"
    ) -> StreamEngine:
        """An engine rebuilt from :meth:`state_dict`'s data; CheckpointError (naming
        ``what``) if it does not fit together."""
        try:
            config = EngineConfig.from_dict(state["engine_config"])
        except (ConfigurationError, TypeError, KeyError) as exc:
            raise CheckpointError(
                f"{what} holds an engine configuration this version cannot use: {exc}"
            ) from exc
        # the weights come from the checkpoint: the initial ones need not be read (nor exist)
        engine = cls(replace(config, init="random"), seed=int(state["seed"]), device=device)
        engine.config = config
        try:
            engine.trainer.load_state_dict(state["trainer"])
            engine.install_weights(state["weights"], version=int(state["model_version"]))
            engine.events_seen = int(state["events_seen"])
            engine._last_fit_events = int(state["last_fit_events"])
            engine._sample_gen.set_state(state["sample_generator"])
            index = [state["streams"], state["fields"], state["keys"]]
            restored = engine.state.restore(*index, state["arrays"])
            engine._reset_nonfinite(restored)  # a state saved non-finite starts again as new
            engine.state.evictions = int(state["evictions"])
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
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> StreamEngine:
        """Rebuild an engine from :meth:`save`'s directory (``torch.load(weights_only=True)``)."""
        data, what = persist.read(Path(directory))
        return cls.from_bytes(data, device, what)

    def to_bytes(self) -> bytes:
        """The whole engine as bytes (what :meth:`save` writes), e.g. for pickling."""
        return persist.dumps(self.state_dict())

    @classmethod
    def from_bytes(
        cls, data: bytes, device: str | torch.device = "cpu", what: str = "engine bytes"
    ) -> StreamEngine:
        return cls.from_state_dict(persist.loads(data, what), device, what)

    def __getstate__(self) -> dict:
        return {"bytes": self.to_bytes(), "device": str(self.device)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(StreamEngine.from_bytes(state["bytes"], state["device"]).__dict__)

    def export_stream(self, stream: str) -> bytes | None:
        """One stream's state as bytes (for a changelog); None if the stream is unknown."""
        with self._lock:
            slots = self.state.slots_of(stream)
            if slots is None:
                return None
            rows = self.state.rows(np.asarray(list(slots.values()), dtype=np.int64))
            fields = list(self.state.fields[stream])
            record = persist.StreamRecord(stream, fields, list(slots), self.model_version, rows)
            return persist.stream_to_bytes(record)

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
                slots = self.state.restore([stream], [record.fields], [record.keys], record.rows)
            except ValueError as exc:
                if stream in self.state:
                    self.state.remove_stream(stream)
                raise CheckpointError(f"state record of stream {stream!r}: {exc}") from exc
            # the state was written under that version: a fresh fit here must number above it
            self.raise_version_floor(record.model_version)
            if record.model_version != self.model_version and self.model_version > 0:
                self._rewarm(slots=slots)
            self._reset_nonfinite(slots)
