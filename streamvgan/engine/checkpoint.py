"""Checkpoints of a whole engine (a directory) and of single streams (bytes).

Everything is written with ``torch.save`` as plain dicts of tensors, strings and numbers, and
read back with ``torch.load(..., weights_only=True)``: loading a checkpoint never runs code.
A ``MANIFEST.json`` beside the data holds its SHA-256, so a truncated or altered file is
reported as corrupt instead of half-loading.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from streamvgan.engine.config import EngineConfig, merge_checkpoint_config
from streamvgan.errors import CheckpointError, ConfigurationError

if TYPE_CHECKING:
    from streamvgan.engine.engine import StreamEngine

FORMAT = "streamvgan-checkpoint"
STREAM_FORMAT = "streamvgan-stream"
#: 2: stream ids, fields and slot keys in one JSON string ("index"), not three lists of Python
#: objects (the weights-only unpickler read 100,000 ids in seconds); version 1 still loads.
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
STREAM_FORMAT_VERSION = 1
DATA_FILE = "engine.pt"
MANIFEST = "MANIFEST.json"

log = logging.getLogger(__name__)


def load_bytes(data: bytes, what: str) -> dict[str, Any]:
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign data
        raise CheckpointError(f"{what} is corrupt or not a streamvgan file: {exc}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{what} is not a streamvgan file (top level is {type(payload).__name__})"
        )
    return payload


def _arrays_to_tensors(engine: StreamEngine, slots: np.ndarray) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(arr[slots].copy()) for name, arr in engine.state.arrays.items()}


def dumps(engine: StreamEngine) -> bytes:
    """The whole engine (weights, optimiser, every stream's state) as bytes."""
    st = engine.state
    names: list[str] = []
    fields: list[list[str]] = []
    keys: list[list[str]] = []
    order: list[int] = []  # slots, stream by stream
    for stream, slots in st.streams.items():  # least recently seen first
        names.append(stream)
        fields.append(list(engine.fields_of[stream]))
        keys.append(list(slots))
        order.extend(slots.values())
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "engine_config": engine.config.to_dict(),
        "seed": engine.seed,
        "weights": engine.model.state_dict(),
        "trainer": engine.trainer.state_dict(),
        "model_version": engine.model_version,
        "events_seen": engine.events_seen,
        "last_fit_events": engine._last_fit_events,
        "evictions": st.evictions,
        "sample_generator": engine._sample_gen.get_state(),
        "index": json.dumps(
            {"streams": names, "fields": fields, "keys": keys}, separators=(",", ":")
        ),
        "arrays": _arrays_to_tensors(engine, np.asarray(order, dtype=np.int64)),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save(engine: StreamEngine, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = dumps(engine)
    tmp = directory / (DATA_FILE + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, directory / DATA_FILE)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sha256": {DATA_FILE: hashlib.sha256(data).hexdigest()},
        "model_version": engine.model_version,
        "streams": engine.n_streams,
    }
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, directory / MANIFEST)
    return directory


def load(
    cls: type[StreamEngine], directory: Path, device, settings: EngineConfig | None = None
) -> StreamEngine:
    data_path, manifest_path = directory / DATA_FILE, directory / MANIFEST
    if not data_path.is_file() or not manifest_path.is_file():
        raise CheckpointError(
            f"no checkpoint in {directory}: expected {DATA_FILE} and {MANIFEST} (written by "
            "StreamEngine.save); start without --checkpoint-dir or point it at a saved one"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["sha256"][DATA_FILE]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_path} is corrupt: {exc}") from exc
    data = data_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{data_path} does not match the checksum in {MANIFEST}: the file is truncated or "
            "was changed after it was written; restore it or delete the directory to start fresh"
        )
    return loads(cls, data, device, str(data_path), settings)


def loads(
    cls: type[StreamEngine],
    data: bytes,
    device,
    what: str = "engine bytes",
    settings: EngineConfig | None = None,
) -> StreamEngine:
    """The engine saved in ``data``; with ``settings``, its architecture comes from the
    checkpoint and everything else from ``settings`` (one log line lists what differs)."""
    data_path = what
    payload = load_bytes(data, what)
    if payload.get("format") != FORMAT or payload.get("format_version") not in READS_VERSIONS:
        raise CheckpointError(
            f"{data_path} has format {payload.get('format')!r} version "
            f"{payload.get('format_version')!r}; this streamvgan reads {FORMAT!r} versions "
            f"{list(READS_VERSIONS)}"
        )
    try:
        config = EngineConfig.from_dict(payload["engine_config"])
    except (ConfigurationError, TypeError) as exc:
        raise CheckpointError(
            f"{data_path} holds an engine configuration this version cannot use: {exc}"
        ) from exc
    if settings is not None:
        config, differences = merge_checkpoint_config(config, settings)
        if differences:
            log.warning(
                "%s: the checkpoint's configuration differs from the settings: %s",
                data_path,
                "; ".join(differences),
            )
    # the weights come from the checkpoint: the initial ones need not be read (nor exist)
    engine = cls(replace(config, init="random"), seed=int(payload["seed"]), device=device)
    engine.config = config
    try:
        engine.trainer.load_state_dict(payload["trainer"])
        engine.install_weights(payload["weights"], version=int(payload["model_version"]))
        engine.events_seen = int(payload["events_seen"])
        engine._last_fit_events = int(payload["last_fit_events"])
        engine._sample_gen.set_state(payload["sample_generator"])
        index = json.loads(payload["index"]) if payload["format_version"] >= 2 else payload
        restored = _restore_streams(
            engine, index["streams"], index["fields"], index["keys"], payload["arrays"]
        )
        engine._reset_nonfinite(restored)  # a state saved non-finite starts again as new
        engine.state.evictions = int(payload["evictions"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{data_path} is incomplete or inconsistent: {exc!r}") from exc
    return engine


def _restore_streams(
    engine: StreamEngine, names, fields, keys, arrays: dict[str, torch.Tensor]
) -> np.ndarray:
    """Install the saved rows of every stream; all shapes are checked before any state changes,
    and each array is copied in one assignment (not per stream: 100,000 streams load in
    seconds, not a minute)."""
    st = engine.state
    expected = set(st.arrays)
    if set(arrays) != expected:
        raise CheckpointError(
            f"stream state has arrays {sorted(arrays)}, expected {sorted(expected)}"
        )
    rows = sum(len(k) for k in keys)
    for name, tensor in arrays.items():
        want = (rows, *st.arrays[name].shape[1:])
        if tuple(tensor.shape) != want:
            raise CheckpointError(
                f"stream state array {name!r} has shape {tuple(tensor.shape)}, this model needs "
                f"{want} ({rows} channels): saved with another configuration"
            )
    restored: list[int] = []
    for stream, stream_fields, stream_keys in zip(names, fields, keys):
        if stream in st:
            st.remove_stream(stream)
        slots = st.add_stream(stream, stream_keys)
        engine.fields_of[stream] = tuple(stream_fields)
        restored.extend(slots.values())
    slots_array = np.asarray(restored, dtype=np.int64)
    for name, tensor in arrays.items():  # after every add_stream: the table may have grown
        st.arrays[name][slots_array] = tensor.numpy()
    return slots_array


_STREAM_MAGIC = b"SVGS"


def stream_to_bytes(engine: StreamEngine, stream: str, slots: dict[str, int]) -> bytes:
    """A compact record of one stream's state: ``SVGS``, a 4-byte header length, a JSON header
    (stream, fields, array names, shapes and dtypes, model version, SHA-256 of the body), then
    the arrays' raw bytes. No pickle: a record from an untrusted topic cannot run code."""
    rows = np.asarray(list(slots.values()), dtype=np.int64)
    arrays = {name: np.ascontiguousarray(arr[rows]) for name, arr in engine.state.arrays.items()}
    body = b"".join(a.tobytes() for a in arrays.values())
    header = {
        "format": STREAM_FORMAT,
        "format_version": STREAM_FORMAT_VERSION,
        "stream": stream,
        "fields": list(engine.fields_of[stream]),
        "keys": list(slots),
        "model_version": engine.model_version,
        "arrays": [[name, list(a.shape), a.dtype.str] for name, a in arrays.items()],
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return _STREAM_MAGIC + len(head).to_bytes(4, "big") + head + body


def _parse_stream(data: bytes, stream: str) -> tuple[dict, dict[str, np.ndarray]]:
    what = f"state record of stream {stream!r}"
    if not isinstance(data, (bytes, bytearray)) or data[:4] != _STREAM_MAGIC or len(data) < 8:
        raise CheckpointError(f"{what} is not a streamvgan stream state (bad magic bytes)")
    size = int.from_bytes(data[4:8], "big")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as exc:
        raise CheckpointError(f"{what} has a corrupt header: {exc}") from exc
    if (
        header.get("format") != STREAM_FORMAT
        or header.get("format_version") != STREAM_FORMAT_VERSION
    ):
        raise CheckpointError(
            f"{what} has format {header.get('format')!r} {header.get('format_version')!r}"
        )
    if header.get("stream") != stream:
        raise CheckpointError(f"{what} holds stream {header.get('stream')!r}")
    body = bytes(data[8 + size :])
    if hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"{what} is truncated or corrupt (checksum mismatch)")
    arrays, offset = {}, 0
    try:
        for name, shape, dtype in header["arrays"]:
            dt = np.dtype(dtype)
            count = int(np.prod(shape))
            arrays[name] = np.frombuffer(body, dtype=dt, count=count, offset=offset).reshape(shape)
            offset += count * dt.itemsize
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{what} does not match its header: {exc}") from exc
    if offset != len(body):
        raise CheckpointError(f"{what} has {len(body) - offset} unexpected trailing bytes")
    return header, arrays


def stream_from_bytes(engine: StreamEngine, stream: str, data: bytes) -> None:
    header, arrays = _parse_stream(data, stream)
    keys = header.get("keys")
    if not isinstance(keys, list) or any(a.shape[0] != len(keys) for a in arrays.values()):
        raise CheckpointError(f"state record of stream {stream!r} has arrays of the wrong length")
    tensors = {name: torch.from_numpy(a.copy()) for name, a in arrays.items()}
    try:
        slots = _restore_streams(engine, [stream], [header["fields"]], [keys], tensors)
    except CheckpointError:
        if stream in engine.state:
            engine.state.remove_stream(stream)
            engine.fields_of.pop(stream, None)
        raise
    # the state was written under that version: a fresh fit here must number above it
    engine.raise_version_floor(int(header.get("model_version", 0)))
    if int(header.get("model_version", -1)) != engine.model_version and engine.model_version > 0:
        engine._rewarm(slots=slots)
