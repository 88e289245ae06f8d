"""The serving network: where its first weights come from, the network that scores and its
version (:class:`ServingNetwork`), fine-tuning its successor, weights as bytes (for a model
topic), and re-warming streams' network state after a swap."""

from __future__ import annotations

import gc
import io
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamvgan.engine.config import EngineConfig
from streamvgan.engine.persist import load_bytes
from streamvgan.engine.state import StateTable
from streamvgan.engine.training import FitReport, Trainer, TrainingWindows, sample_windows
from streamvgan.errors import CheckpointError, ConfigurationError
from streamvgan.nn.model import ModelConfig, RecurrentVAEGAN, WindowCritic
from streamvgan.nn.pretrained import load_pretrained, shipped_path

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def initial_weights(config: EngineConfig) -> tuple[EngineConfig, dict[str, torch.Tensor]]:
    """The configuration with the architecture of ``config.init``'s weights file, and the
    weights. Model settings left at their defaults take the file's; others must match it,
    except ``horizon``: the network forecasts its own horizon, and a caller that wants fewer
    steps (the River forecaster) reads the first ones, and ``adversarial=False``: weights
    trained with a critic start a network without one (the critic's weights are dropped;
    the generator's were trained with the adversarial term, the ablation is of the critic's
    signal and online adversarial fine-tuning)."""
    path = shipped_path() if config.init == "pretrained" else Path(config.init)
    stored, weights, _ = load_pretrained(path)
    asked = replace(config.model, horizon=stored.horizon)
    if stored.adversarial and not asked.adversarial:
        stored = replace(stored, adversarial=False)
        weights = {k: v for k, v in weights.items() if not k.startswith("critic.")}
    if asked != stored and asked != ModelConfig(
        n_features=asked.n_features, horizon=stored.horizon, adversarial=asked.adversarial
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


def build(
    config: ModelConfig, weights: Mapping[str, torch.Tensor], device: torch.device
) -> tuple[RecurrentVAEGAN, WindowCritic | None]:
    """A network in eval mode with ``weights``, and its critic folded for scoring;
    CheckpointError if the weights do not fit ``config``."""
    model = RecurrentVAEGAN(config).to(device)
    try:
        model.load_state_dict(dict(weights))
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"weights do not fit this model configuration: {exc}") from exc
    model.eval()
    return model, model.critic.frozen() if model.critic is not None else None


def warm_states(
    model: RecurrentVAEGAN, windows: np.ndarray, device: torch.device, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network state ``h`` and forecast (mean, scale) of channels after ``model`` read
    their replayed ``windows`` (U, W, F) float32, oldest first, ``chunk`` channels a call."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(windows), chunk):
        x = torch.from_numpy(windows[start : start + chunk]).to(device)
        with torch.no_grad():
            _, h = model.rnn(x)
            h = h.squeeze(0)
            f_mean, f_scale = model.forecast(h, x[:, -1])
        parts.append((h.cpu().numpy(), f_mean.cpu().numpy(), f_scale.cpu().numpy()))
    if not parts:
        cfg = model.config
        return (
            np.zeros((0, cfg.hidden_size), dtype=np.float32),
            np.zeros((0, cfg.horizon, cfg.n_features), dtype=np.float32),
            np.zeros((0, cfg.horizon, cfg.n_features), dtype=np.float32),
        )
    states, means, scales = zip(*parts)
    return np.concatenate(states), np.concatenate(means), np.concatenate(scales)


def rewarm(
    model: RecurrentVAEGAN,
    st: StateTable,
    slots: np.ndarray,
    window: int,
    device: torch.device,
    chunk: int = 4096,
) -> None:
    """Recompute the network state and forecast of channels ``slots`` by running ``model``
    over their last ``window`` replayed values, so that they match its weights."""
    for start in range(0, len(slots), chunk):
        part = slots[start : start + chunk]
        windows = st.recent_values(part, min(window, st.sizes["R"]))
        st.h[part], st.f_mean[part], st.f_scale[part] = warm_states(model, windows, device, chunk)


def freeze_startup_objects() -> None:
    """``gc.freeze()``, once per process: the objects alive now (torch's ~400,000 import-time
    objects, the network) move to a generation the garbage collector never walks again.
    Without it, the few objects each event makes that live through a poll (events, scores)
    trigger full collections that walk all of torch's every few polls: 29% of the time at
    10,000 streams per poll. Called when the first network is built; harmless to call again."""
    global _FROZEN
    if not _FROZEN:
        gc.freeze()
        _FROZEN = True


_FROZEN = False


class ServingNetwork:
    """The network that scores the streams of ``state`` (its weights, its critic folded for
    scoring, its version), the :class:`Trainer` that fits the next weights on a private
    copy, and the swap: weights are installed under ``lock`` (the engine's), and every
    channel's network state is re-warmed from its replay buffer to match them.

    Version 0 is the cold start (no fitted network: the engine uses its fallback signals);
    ``weights`` (pretrained) serve from event one as version 1. One fit runs at a time.
    """

    def __init__(
        self,
        config: EngineConfig,
        seed: int,
        device: torch.device,
        state: StateTable,
        lock: threading.RLock,
        weights: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.config, self.device, self.state, self.lock = config, device, state, lock
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = RecurrentVAEGAN(config.model)
        if weights is not None:
            model.load_state_dict(weights)
        self.model = model.to(device).eval()
        self.trainer = Trainer(
            self.model,
            config.learning_rate,
            config.critic_learning_rate,
            config.batch_size,
            config.burn_in,
            seed,
            device,
            anchor=weights,
            anchor_weight=config.finetune_anchor,
        )
        self.version = 0 if weights is None else 1
        self.version_floor = 0  # the next fit's version is above it
        self.last_fit_events = 0  # events seen when the last fit started
        self.swaps = 0  # weights installed so far (part of the engine's revision)
        self.critic = self.model.critic.frozen() if self.model.critic is not None else None
        self.sample_gen = torch.Generator(device=device)  # noise of sampled continuations
        self.sample_gen.manual_seed(seed + 2)
        self._fit_lock = threading.Lock()
        freeze_startup_objects()

    @property
    def scoring(self) -> RecurrentVAEGAN | None:
        """The network to score with; None during the cold start."""
        return self.model if self.version > 0 else None

    def due(self, events_seen: int) -> bool:
        if self.version == 0:
            return events_seen >= self.config.warmup_events
        return events_seen - self.last_fit_events >= self.config.fit_every

    def sample_windows(self, n_windows: int) -> TrainingWindows | None:
        """Up to ``n_windows`` training windows from the replay buffers (None: none yet)."""
        cfg = self.config
        with self.lock:
            return sample_windows(
                self.state, self.trainer.rng, n_windows, cfg.window, cfg.replay_size
            )

    def fit(
        self,
        events_seen: Callable[[], int],
        steps: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitReport | None:
        """One fine-tune: ``steps`` optimiser steps (by default the first or a later fit's)
        on windows from the replay buffers, then :meth:`install` of the result. None if there
        was nothing to train on or ``should_stop()`` turned true."""
        cfg = self.config
        with self._fit_lock:
            events_at_start = events_seen()
            steps = steps or (cfg.first_fit_steps if self.version == 0 else cfg.fit_steps)
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
            version = self.install(self.trainer.weights())
            self.last_fit_events = events_at_start
            rounded = {k: round(v, 3) for k, v in losses.items()}
            log.info(
                "fine-tune -> model_version=%d steps=%d windows=%d %.2fs losses=%s",
                *(version, steps, len(windows), duration, rounded),
            )
            return FitReport(version, steps, duration, losses, len(windows))

    def install(self, weights: Mapping[str, torch.Tensor], version: int | None = None) -> int:
        """Serve ``weights`` as ``version`` (by default the next one) and re-warm every
        channel; return the version.

        The re-warm runs the new network over every channel's replay buffer (at 10,000
        streams ~0.3 s here, which held the lock and stalled scoring). So it runs on a copy
        of the buffers, outside the lock, while scoring goes on; under the lock, channels
        whose buffer is still the one copied take the state computed from it (the same
        numbers: the state is a function of the buffer and the weights), and only those that
        learned an event since, and new ones, are re-warmed there."""
        built = build(self.config.model, weights, self.device)
        st, window = self.state, min(self.config.window, self.state.sizes["R"])
        with self.lock:
            used = st.used_slots()
            copied = st.recent_values(used, window)
        h, f_mean, f_scale = warm_states(built[0], copied, self.device)
        with self.lock:
            self.model, self.critic = built
            self.swaps += 1
            now = st.used_slots()
            if self.version == 0:  # the model signal changes meaning (fallback -> model):
                # restart its statistics and calibration history
                st.warm_n[now], st.cal_n[now, 0] = 0, 0
                st.cal_mean[now, 0], st.cal_var[now, 0] = 0.0, 0.0
            floor = max(self.version, self.version_floor)
            self.version = floor + 1 if version is None else int(version)
            same = np.isin(used, now)
            same[same] = (st.recent_values(used[same], window) == copied[same]).all(axis=(1, 2))
            kept = used[same]
            st.h[kept], st.f_mean[kept], st.f_scale[kept] = h[same], f_mean[same], f_scale[same]
            stale = now[~np.isin(now, kept)]
            if len(stale):
                rewarm(self.model, st, stale, self.config.window, self.device)
            st.reset_nonfinite(now, ("h", "f_mean", "f_scale"))
            return self.version

    def rewarm(self, slots: np.ndarray) -> None:
        """Recompute the network state and forecast of channels ``slots`` from their replay
        buffers (streams that turn non-finite are reset)."""
        with self.lock:
            rewarm(self.model, self.state, slots, self.config.window, self.device)
            self.state.reset_nonfinite(slots, ("h", "f_mean", "f_scale"))

    def to_bytes(self) -> bytes:
        """The serving weights, model config and version (``torch.save`` of plain data)."""
        with self.lock:
            payload = {
                "model_config": self.config.model.to_dict(),
                "weights": self.model.state_dict(),
                "model_version": self.version,
            }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    def install_bytes(self, data: bytes, version: int) -> None:
        """:meth:`install` the weights in :meth:`to_bytes`' bytes as ``version`` (the trainer
        continues from them too); CheckpointError unless they were made for this network."""
        payload = load_bytes(data, "model weights")
        if payload.get("model_config") != self.config.model.to_dict():
            raise CheckpointError(
                "model weights were trained with another model configuration: "
                f"{payload.get('model_config')} != {self.config.model.to_dict()}"
            )
        self.trainer.model.load_state_dict(payload["weights"])
        self.install(payload["weights"], version)

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.model.state_dict(),
            "trainer": self.trainer.state_dict(),
            "model_version": self.version,
            "last_fit_events": self.last_fit_events,
            "sample_generator": self.sample_gen.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the weights with :meth:`install`)."""
        self.trainer.load_state_dict(state["trainer"])
        self.install(state["weights"], int(state["model_version"]))
        self.last_fit_events = int(state["last_fit_events"])
        self.sample_gen.set_state(state["sample_generator"])
