"""The serving network: where its first weights come from, building it from weights, weights
as bytes (for a model topic), and re-warming streams' network state after a swap."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from streamvgan.engine.config import EngineConfig
from streamvgan.engine.persist import load_bytes
from streamvgan.engine.state import StateTable
from streamvgan.errors import CheckpointError, ConfigurationError
from streamvgan.nn.model import ModelConfig, RecurrentVAEGAN, WindowCritic
from streamvgan.nn.pretrained import load_pretrained, shipped_path


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def initial_weights(config: EngineConfig) -> tuple[EngineConfig, dict[str, torch.Tensor]]:
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


def weights_to_bytes(config: ModelConfig, model: RecurrentVAEGAN, version: int) -> bytes:
    """Weights, model config and version as bytes (``torch.save`` of plain data)."""
    payload = {
        "model_config": config.to_dict(),
        "weights": model.state_dict(),
        "model_version": version,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def weights_from_bytes(data: bytes, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights in :func:`weights_to_bytes`' bytes; CheckpointError unless they were made
    for ``config``."""
    payload = load_bytes(data, "model weights")
    if payload.get("model_config") != config.to_dict():
        raise CheckpointError(
            "model weights were trained with another model configuration: "
            f"{payload.get('model_config')} != {config.to_dict()}"
        )
    return payload["weights"]


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
        x = torch.from_numpy(st.recent_values(part, min(window, st.sizes["R"]))).to(device)
        with torch.no_grad():
            _, h = model.rnn(x)
            h = h.squeeze(0)
            f_mean, f_scale = model.forecast(h, x[:, -1])
        st.h[part] = h.cpu().numpy()
        st.f_mean[part] = f_mean.cpu().numpy()
        st.f_scale[part] = f_scale.cpu().numpy()
