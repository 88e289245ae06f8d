"""The pretrained weights file: weights + model configuration, with a JSON manifest beside it.

``<name>.pt`` holds ``{"format", "format_version", "model_config", "weights"}`` written by
``torch.save`` and read back with ``weights_only=True`` (loading never runs code);
``<name>.json`` holds the file's SHA-256, its size, the model configuration, the recipe and
command that made it, and what it measured while being made. The package ships one such pair,
made by ``streamvgan pretrain`` (see docs/pretraining.md), as :data:`SHIPPED`.
"""

from __future__ import annotations

import hashlib
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from streamvgan.errors import CheckpointError
from streamvgan.nn.model import ModelConfig

FORMAT = "streamvgan-pretrained"
FORMAT_VERSION = 1


def shipped_path() -> Path:
    """Where the package's own pretrained weights lie."""
    return Path(str(resources.files("streamvgan.nn") / "weights" / "pretrained.pt"))


def manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_pretrained(
    path: str | Path,
    weights: dict[str, torch.Tensor],
    model_config: ModelConfig,
    recipe: dict[str, Any],
) -> str:
    """Write the weights file and its manifest (with ``recipe`` merged in); return the SHA-256."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_dict(),
        "weights": {k: v.detach().cpu().contiguous() for k, v in weights.items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    manifest = {
        **recipe,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sha256": sha,
        "bytes": len(data),
        "model_config": model_config.to_dict(),
        "torch": torch.__version__,
    }
    manifest_path(path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return sha


def load_pretrained(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Read a weights file written by :func:`save_pretrained`, checking its SHA-256.

    Returns the model configuration, the weights and the manifest."""
    path = Path(path)
    try:
        data = path.read_bytes()
        manifest = json.loads(manifest_path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read pretrained weights {path} and their manifest "
            f"{manifest_path(path).name}: {exc}; make them with `streamvgan pretrain --out "
            f"{path}` or use init='random'"
        ) from exc
    sha = hashlib.sha256(data).hexdigest()
    if not isinstance(manifest, dict) or sha != manifest.get("sha256"):
        recorded = manifest.get("sha256") if isinstance(manifest, dict) else None
        raise CheckpointError(
            f"pretrained weights {path} do not match their manifest (sha256 {sha} != "
            f"{recorded}): the file is corrupt or was replaced; remake it with "
            "`streamvgan pretrain`"
        )
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign data
        raise CheckpointError(f"pretrained weights {path} are not a torch file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a streamvgan pretrained weights file")
    return ModelConfig.from_dict(payload["model_config"]), payload["weights"], manifest
