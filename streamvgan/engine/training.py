"""Fine-tuning: train a private copy of the network on windows from the replay buffers, then
hand the new weights to the engine, which swaps them in atomically.

The trainer never touches the network that scores events, so scoring goes on while it trains
(in :class:`~streamvgan.engine.tuner.BackgroundFineTuner`'s thread, or inline in
:meth:`StreamEngine.fine_tune`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from streamvgan.engine.state import StateTable
from streamvgan.nn.model import RecurrentVAEGAN


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
    but the critic, Adam; critic: Adam with the hinge loss).

    ``anchor_weight`` > 0 adds ``anchor_weight * sum((p - p0)^2)`` over the generator's
    parameters to every step's loss, where ``p0`` are ``anchor`` (the pretrained weights):
    the L2-SP penalty of Li, Grandvalet & Davoine ("Explicit inductive bias for transfer
    learning with convolutional networks", ICML 2018), so fine-tuning on one stream's windows
    cannot drift far from what pretraining learned across many series.
    """

    def __init__(
        self,
        model: RecurrentVAEGAN,
        learning_rate: float,
        critic_learning_rate: float,
        batch_size: int,
        burn_in: int,
        seed: int,
        device: torch.device,
        anchor: Mapping[str, torch.Tensor] | None = None,
        anchor_weight: float = 0.0,
    ) -> None:
        self.model = copy.deepcopy(model).to(device)
        self.anchor_weight = anchor_weight
        self.anchor: dict[str, torch.Tensor] | None = None
        if anchor is not None and anchor_weight > 0:
            self.anchor = {
                k: v.detach().clone().to(device)
                for k, v in anchor.items()
                if not k.startswith("critic.")
            }
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
            total = out.total
            if self.anchor is not None:
                total = total + self.anchor_weight * self._drift()
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], 1.0)
            self.optimizer.step()
            if self.critic_optimizer is not None and out.fake is not None:
                real = x[:, self.burn_in : self.burn_in + wc]
                critic_loss = model.critic_loss(real, out.fake)
                self.critic_optimizer.zero_grad(set_to_none=True)
                critic_loss.backward()
                self.critic_optimizer.step()
                totals["critic"] = totals.get("critic", 0.0) + critic_loss.item()
            for key, value in [*out.terms.items(), ("total", total)]:
                totals[key] = totals.get(key, 0.0) + value.detach().item()
        model.eval()
        return {k: v / max(steps, 1) for k, v in totals.items()}

    def _drift(self) -> torch.Tensor:
        """Squared distance of the generator's parameters from the anchor weights."""
        assert self.anchor is not None
        return sum(
            ((p - self.anchor[n]) ** 2).sum()
            for n, p in self.model.named_parameters()
            if n in self.anchor
        )  # type: ignore[return-value]

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
        if self.anchor is not None:  # a checkpoint resumes without the pretrained file
            state["anchor"] = self.anchor
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.critic_optimizer is not None:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.generator.set_state(state["generator"])
        self.rng = _rng_from_tensor(state["rng"])
        if self.anchor_weight > 0 and "anchor" in state:
            self.anchor = {k: v.to(self.device) for k, v in state["anchor"].items()}


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


def sample_windows(
    st: StateTable, rng: np.random.Generator, n_windows: int, window: int, replay_size: int
) -> TrainingWindows | None:
    """Up to ``n_windows`` windows of ``window`` points from the replay buffers of ``st``,
    uniformly over eligible channels and positions; None when no channel has a full window."""
    used = st.used_slots()
    n = st.n[used]
    eligible = used[n >= window]
    if len(eligible) == 0:
        return None
    pick = eligible[rng.integers(0, len(eligible), n_windows)]
    n_pick = st.n[pick]
    span = np.minimum(n_pick, replay_size) - window
    ends = n_pick - (rng.random(n_windows) * (span + 1)).astype(np.int64)
    x, w = st.windows(pick, ends, window)
    return TrainingWindows(x.copy(), w.astype(np.float32))
