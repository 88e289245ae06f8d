"""Fine-tuning: train a private copy of the network on windows from the replay buffers, then
hand the new weights to the engine, which swaps them in atomically.

The trainer never touches the network that scores events, so scoring goes on while it trains
(in :class:`BackgroundFineTuner`'s thread, or inline in :meth:`StreamEngine.fine_tune`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from streamvgan.nn.model import RecurrentVAEGAN

if TYPE_CHECKING:
    from streamvgan.engine.engine import StreamEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitReport:
    """What one fine-tune did: the model version it produced, optimiser steps, wall time,
    mean losses over its steps and the number of windows it sampled from."""

    version: int
    steps: int
    duration_s: float
    losses: dict[str, float] = field(default_factory=dict)
    n_windows: int = 0


@dataclass
class TrainingWindows:
    """Normalised windows (N, T, F) and per-step learning weights (N, T)."""

    x: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


class Trainer:
    """Owns the training copy of the network and its optimisers (generator side: everything
    but the critic, Adam; critic: Adam with the hinge loss)."""

    def __init__(
        self,
        model: RecurrentVAEGAN,
        learning_rate: float,
        critic_learning_rate: float,
        batch_size: int,
        burn_in: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.model = copy.deepcopy(model).to(device)
        self.device = device
        self.batch_size = batch_size
        self.burn_in = burn_in
        gen_params = [p for n, p in self.model.named_parameters() if not n.startswith("critic.")]
        self.optimizer = torch.optim.Adam(gen_params, lr=learning_rate)
        self.critic_optimizer = (
            torch.optim.Adam(
                self.model.critic.parameters(), lr=critic_learning_rate, betas=(0.5, 0.9)
            )
            if self.model.critic is not None
            else None
        )
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed + 1)

    def train(
        self, windows: TrainingWindows, steps: int, should_stop: Callable[[], bool] | None = None
    ) -> dict[str, float] | None:
        """Run ``steps`` optimiser steps on minibatches of ``windows``; return mean losses, or
        None when ``should_stop()`` turned true between two steps (the result is then partial
        and must not be installed)."""
        model = self.model
        model.train()
        totals: dict[str, float] = {}
        x_all = torch.from_numpy(windows.x).to(self.device)
        w_all = torch.from_numpy(windows.weight.astype(np.float32)).to(self.device)
        wc = model.config.critic_window
        for _ in range(steps):
            if should_stop is not None and should_stop():
                model.eval()
                return None
            idx = torch.from_numpy(self.rng.integers(0, len(windows), self.batch_size)).to(
                self.device
            )
            x, w = x_all[idx], w_all[idx]
            out = model.losses(x, w, self.burn_in, self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            out["total"].backward()
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], 1.0)
            self.optimizer.step()
            if self.critic_optimizer is not None and "_fake" in out:
                real = x[:, self.burn_in : self.burn_in + wc]
                critic_loss = model.critic_loss(real, out["_fake"])
                self.critic_optimizer.zero_grad(set_to_none=True)
                critic_loss.backward()
                self.critic_optimizer.step()
                totals["critic"] = totals.get("critic", 0.0) + critic_loss.item()
            for key, value in out.items():
                if not key.startswith("_"):
                    totals[key] = totals.get(key, 0.0) + value.detach().item()
        model.eval()
        return {k: v / max(steps, 1) for k, v in totals.items()}

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "rng": _rng_state_to_tensor(self.rng),
        }
        if self.critic_optimizer is not None:
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.critic_optimizer is not None:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.generator.set_state(state["generator"])
        self.rng = _rng_from_tensor(state["rng"])


def _rng_state_to_tensor(rng: np.random.Generator) -> torch.Tensor:
    # PCG64's state is two 128-bit ints: store as 8 uint32 words so weights_only loading works
    s = rng.bit_generator.state["state"]
    words = []
    for value in (s["state"], s["inc"]):
        words += [(value >> (32 * i)) & 0xFFFFFFFF for i in range(4)]
    words += [rng.bit_generator.state["has_uint32"], rng.bit_generator.state["uinteger"]]
    return torch.tensor(words, dtype=torch.int64)


def _rng_from_tensor(t: torch.Tensor) -> np.random.Generator:
    w = [int(v) for v in t.tolist()]
    state = sum(w[i] << (32 * i) for i in range(4))
    inc = sum(w[4 + i] << (32 * i) for i in range(4))
    rng = np.random.default_rng()
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": inc},
        "has_uint32": w[8],
        "uinteger": w[9],
    }
    return rng


class BackgroundFineTuner:
    """Fine-tunes ``engine`` in a daemon thread whenever it is due, so scoring never waits for
    training; the new weights are swapped in between two batches.

    Parameters
    ----------
    engine
        The engine to train and update.
    on_fit
        Called with each :class:`FitReport` (from the training thread).
    interval_s
        How often the thread checks whether a fine-tune is due.

    Examples
    --------
    >>> import math, time
    >>> from streamvgan.engine import StreamEngine, EngineConfig, Event
    >>> engine = StreamEngine(EngineConfig(warmup_events=100, first_fit_steps=5), seed=0)
    >>> with BackgroundFineTuner(engine, interval_s=0.01) as tuner:
    ...     for t in range(200):
    ...         _ = engine.process([Event("s", {"value": math.sin(t / 3)})])
    ...     deadline = time.monotonic() + 30
    ...     while engine.model_version == 0 and time.monotonic() < deadline:
    ...         time.sleep(0.01)
    >>> engine.model_version >= 1
    True
    """

    def __init__(
        self,
        engine: StreamEngine,
        on_fit: Callable[[FitReport], None] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.engine = engine
        self.on_fit = on_fit
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> BackgroundFineTuner:
        self._thread = threading.Thread(target=self._run, name="streamvgan-finetune", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                report = self.engine.fine_tune(should_stop=self._stop.is_set)
            except Exception as exc:  # keep scoring alive; the error is logged and kept
                log.exception("fine-tune failed; scoring continues with the current weights")
                self.error = exc
                report = None
            if report is not None and self.on_fit is not None:
                self.on_fit(report)
            if report is None:
                self._stop.wait(self.interval_s)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("fine-tune thread still running after %.1fs; leaving it", timeout)

    def __enter__(self) -> BackgroundFineTuner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def timed(fn: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
