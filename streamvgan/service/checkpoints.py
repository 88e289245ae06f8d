"""Atomic engine checkpoints in a directory that a crash cannot leave half written.

Each checkpoint is a fresh sub-directory ``ckpt-<unix ns>/`` written by
``StreamEngine.save``; only when it is complete does the small ``LATEST`` file (replaced
atomically with ``os.replace``) point at it. A crash mid-save leaves ``LATEST`` on the previous
checkpoint. The newest ``keep`` checkpoints are kept, older ones removed. A directory written
directly by ``StreamEngine.save`` (no ``LATEST``) is loaded as it is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamvgan.engine import StreamEngine
from streamvgan.errors import CheckpointError

log = logging.getLogger(__name__)

LATEST = "LATEST"
SERVICE_INFO = "service.json"
_PREFIX = "ckpt-"


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The directory of the newest complete checkpoint under ``directory``, or None."""
    root = Path(directory)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text("utf-8").strip()
        path = root / name
        if not name or "/" in name or not path.is_dir():
            raise CheckpointError(
                f"{pointer} names {name!r}, which is not a checkpoint directory in {root}; "
                "remove the LATEST file to start from scratch"
            )
        return path
    if (root / "manifest.json").is_file():  # a plain StreamEngine.save directory
        return root
    return None


def save_checkpoint(
    engine: StreamEngine,
    directory: str | os.PathLike[str],
    info: Mapping[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Save ``engine`` as a new checkpoint, point ``LATEST`` at it, prune old ones.

    ``info`` (offsets, counts) is written beside it as ``service.json`` for operators.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{_PREFIX}{time.time_ns()}"
    target = root / name
    engine.save(target)
    if info is not None:
        (target / SERVICE_INFO).write_text(json.dumps(dict(info), indent=2, default=str))
    _fsync_dir(target)
    tmp = root / (LATEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)
    old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))
    for path in old[: max(0, len(old) - keep)]:
        if path.name != name:
            shutil.rmtree(path, ignore_errors=True)
    return target


def load_checkpoint(directory: str | os.PathLike[str], device: str = "cpu") -> StreamEngine | None:
    """The engine of the newest checkpoint under ``directory``; None when there is none."""
    path = latest_checkpoint(directory)
    if path is None:
        return None
    engine = StreamEngine.load(path, device=device)
    log.info(
        "loaded checkpoint %s: model_version=%d streams=%d events_seen=%d",
        path, engine.model_version, engine.n_streams, engine.events_seen,
    )
    return engine


def read_service_info(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``service.json`` beside the newest checkpoint, if any."""
    path = latest_checkpoint(directory)
    if path is None or not (path / SERVICE_INFO).is_file():
        return None
    return json.loads((path / SERVICE_INFO).read_text("utf-8"))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
