"""Atomic engine checkpoints in a directory that a crash cannot leave half written.

Each checkpoint is a fresh sub-directory ``ckpt-<unix ns>/`` written by
``StreamEngine.save``; only when it is complete does the small ``LATEST`` file (replaced
atomically with ``os.replace``) point at it. A crash mid-save leaves ``LATEST`` on the previous
checkpoint. The newest ``keep`` checkpoints are kept, older ones removed. A directory written
directly by ``StreamEngine.save`` (its ``MANIFEST.json`` and no ``LATEST``) is loaded as it is.

Loading falls back: when the checkpoint ``LATEST`` names cannot be used (``LATEST`` unreadable
or binary, data truncated, checksum or manifest wrong), the other ``ckpt-*`` directories are
tried newest first, each skip logged and reported to ``on_fallback`` (the service counts them
in ``streamvgan_checkpoint_load_fallbacks_total``). Only when none loads is there an error,
naming every directory tried and why.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from streamvgan.engine import EngineConfig, StreamEngine
from streamvgan.engine.persist import MANIFEST
from streamvgan.errors import CheckpointError

log = logging.getLogger(__name__)

LATEST = "LATEST"
SERVICE_INFO = "service.json"
_PREFIX = "ckpt-"


def _pointer(root: Path) -> str | None:
    """The checkpoint name in ``root/LATEST``; None without the file; CheckpointError when it
    does not name a sub-directory (binary bytes, empty, a path)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    raw = pointer.read_bytes()
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = None
    if (
        not name
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or not name.isprintable()
        or not (root / name).is_dir()
    ):
        raise CheckpointError(
            f"{pointer} holds {raw[:64]!r}, which does not name a checkpoint directory in "
            f"{root}; remove the LATEST file (the newest complete ckpt-* directory is then "
            "used) or the whole directory to start from scratch"
        )
    return name


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The directory of the newest complete checkpoint under ``directory``, or None."""
    root = Path(directory)
    name = _pointer(root)
    if name is not None:
        return root / name
    if (root / MANIFEST).is_file():  # a plain StreamEngine.save directory
        return root
    return None


def candidates(directory: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints under ``directory`` in the order loading tries them: the one ``LATEST``
    names (if it is readable), then every other ``ckpt-*`` directory, newest first."""
    root = Path(directory)
    try:
        name = _pointer(root)
    except CheckpointError:
        name = None
    others = (
        sorted(
            (p for p in root.glob(_PREFIX + "*") if p.is_dir() and p.name != name),
            key=lambda p: p.name,
            reverse=True,
        )
        if root.is_dir()
        else []
    )
    return ([root / name] if name else []) + others


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
    # keep the newest `keep` complete checkpoints (loading falls back to them); directories a
    # crash left without a manifest never count as one of them
    old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))
    complete = [p for p in old if (p / MANIFEST).is_file()]
    kept = {p.name for p in complete[-max(keep, 1) :]} | {name}
    for path in old:
        if path.name not in kept:
            shutil.rmtree(path, ignore_errors=True)
    return target


def load_checkpoint(
    directory: str | os.PathLike[str],
    device: str = "cpu",
    on_fallback: Callable[[Path, Exception], None] | None = None,
    settings: EngineConfig | None = None,
) -> StreamEngine | None:
    """The engine of the newest usable checkpoint under ``directory``; None when there is none.

    With ``settings`` (the configuration the process was started with), only the architecture
    comes from the checkpoint and every other setting from ``settings``
    (:func:`~streamvgan.engine.config.merge_checkpoint_config`).

    A checkpoint that cannot be loaded is skipped for the next older one (logged, and passed
    to ``on_fallback``); :class:`CheckpointError` when there are checkpoints and none loads.
    """
    root = Path(directory)
    try:
        _pointer(root)
        pointer_error: CheckpointError | None = None
    except CheckpointError as exc:
        pointer_error = exc
    tried = candidates(root)
    if not tried:
        if pointer_error is not None:
            raise pointer_error
        if (root / MANIFEST).is_file():  # a plain StreamEngine.save directory
            tried = [root]
        else:
            return None
    failures: list[str] = []
    if pointer_error is not None:
        failures.append(str(pointer_error))
        log.warning("%s; trying the other checkpoints", pointer_error)
        if on_fallback is not None:
            on_fallback(root / LATEST, pointer_error)
    for path in tried:
        try:
            engine = StreamEngine.load(path, device=device, settings=settings)
        except (CheckpointError, OSError) as exc:
            failures.append(f"{path.name}: {exc}")
            log.warning("checkpoint %s cannot be used (%s); trying the previous one", path, exc)
            if on_fallback is not None:
                on_fallback(path, exc)
            continue
        log.info(
            "loaded checkpoint %s: model_version=%d streams=%d events_seen=%d",
            path,
            engine.model_version,
            engine.n_streams,
            engine.events_seen,
        )
        return engine
    raise CheckpointError(
        f"no usable checkpoint in {root} ({len(tried)} tried): "
        + "; ".join(failures)
        + ". Restore a good checkpoint there, or move the directory away to start fresh"
    )


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
