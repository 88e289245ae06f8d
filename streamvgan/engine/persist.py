"""The file formats of an engine checkpoint (a directory, or bytes) and of one stream's state
(a changelog record). File formats only: the engine hands over and takes back plain data
(:meth:`StreamEngine.state_dict`, :class:`StreamRecord`); nothing here reads its fields.

A checkpoint is written with ``torch.save`` as a plain dict of tensors, strings and numbers,
and read back with ``torch.load(..., weights_only=True)``: loading a checkpoint never runs
code. A ``MANIFEST.json`` beside the data holds its SHA-256, so a truncated or altered file is
reported as corrupt instead of half-loading. A stream record is ``SVGS``, a header length, a
JSON header with the SHA-256 of the body, and the rows' raw bytes: no pickle either.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from streamvgan.engine.config import EngineConfig, merge_checkpoint_config
from streamvgan.engine.state import StateTable, StreamRecord
from streamvgan.errors import CheckpointError, ConfigurationError

FORMAT = "streamvgan-checkpoint"
STREAM_FORMAT = "streamvgan-stream"
#: 2: stream ids, fields and slot keys in one JSON string ("index"), not three lists of Python
#: objects (the weights-only unpickler read 100,000 ids in seconds); version 1 still loads.
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
STREAM_FORMAT_VERSION = 1
DATA_FILE = "engine.pt"
MANIFEST = "MANIFEST.json"
_STREAM_MAGIC = b"SVGS"
log = logging.getLogger(__name__)
#: keys of an engine's state dict that the file holds in an index, not as they are
_INDEX_KEYS = ("streams", "fields", "keys")


def load_bytes(data: bytes, what: str) -> dict[str, Any]:
    """A ``torch.save`` payload read with ``weights_only=True``; CheckpointError if it is not
    a dict."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign data
        raise CheckpointError(f"{what} is corrupt or not a streamvgan file: {exc}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{what} is not a streamvgan file (top level is {type(payload).__name__})"
        )
    return payload


def dumps(state: dict[str, Any]) -> bytes:
    """An engine's :meth:`~StreamEngine.state_dict` as checkpoint bytes."""
    payload = {k: v for k, v in state.items() if k not in (*_INDEX_KEYS, "arrays")}
    payload["format"], payload["format_version"] = FORMAT, FORMAT_VERSION
    payload["index"] = json.dumps({k: state[k] for k in _INDEX_KEYS}, separators=(",", ":"))
    payload["arrays"] = {name: torch.from_numpy(a) for name, a in state["arrays"].items()}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def loads(data: bytes, what: str = "engine bytes") -> dict[str, Any]:
    """Checkpoint bytes back to the state dict :func:`dumps` was given (arrays as numpy);
    CheckpointError for another format or a missing part."""
    payload = load_bytes(data, what)
    if payload.get("format") != FORMAT or payload.get("format_version") not in READS_VERSIONS:
        raise CheckpointError(
            f"{what} has format {payload.get('format')!r} version "
            f"{payload.get('format_version')!r}; this streamvgan reads {FORMAT!r} versions "
            f"{list(READS_VERSIONS)}"
        )
    try:
        index = json.loads(payload.pop("index")) if payload["format_version"] >= 2 else payload
        state = {k: v for k, v in payload.items() if k not in ("format", "format_version")}
        state.update({k: index[k] for k in _INDEX_KEYS})
        state["arrays"] = {name: t.numpy() for name, t in payload["arrays"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{what} is incomplete or inconsistent: {exc!r}") from exc
    return state


def engine_config(
    state: Mapping[str, Any], what: str, settings: EngineConfig | None = None
) -> EngineConfig:
    """The :class:`EngineConfig` to run a loaded state with: the one it holds, or with
    ``settings``, its architecture and everything else from ``settings``
    (:func:`~streamvgan.engine.config.merge_checkpoint_config`; one log line lists what
    differs). CheckpointError if this version cannot use the one it holds."""
    try:
        config = EngineConfig.from_dict(state["engine_config"])
    except (ConfigurationError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{what} holds an engine configuration this version cannot use: {exc}"
        ) from exc
    if settings is not None:
        config, differences = merge_checkpoint_config(config, settings)
        if differences:
            log.warning(
                "%s: the checkpoint's configuration differs from the settings: %s",
                what,
                "; ".join(differences),
            )
    return config


def save(data: bytes, directory: Path, model_version: int, n_streams: int) -> Path:
    """Write checkpoint bytes and their manifest into ``directory`` (each file atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (DATA_FILE + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, directory / DATA_FILE)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sha256": {DATA_FILE: hashlib.sha256(data).hexdigest()},
        "model_version": model_version,
        "streams": n_streams,
    }
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, directory / MANIFEST)
    return directory


def read(directory: Path) -> tuple[bytes, str]:
    """The checkpoint bytes in ``directory``, checked against the manifest, and the data
    file's path (for messages)."""
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
    return data, str(data_path)


def stream_to_bytes(record: StreamRecord) -> bytes:
    """A compact record of one stream's state: ``SVGS``, a 4-byte header length, a JSON header
    (stream, fields, array names, shapes and dtypes, model version, SHA-256 of the body), then
    the arrays' raw bytes. No pickle: a record from an untrusted topic cannot run code.

    The header is the bytes ``json.dumps(header, separators=(",", ":"))`` writes, put together
    from pieces: the array layout, the same for every stream of a table, is encoded once
    (:func:`_layout_json`). ``json.dumps`` of the whole header was ~50 us of a record's ~70 us
    here, and a changelog commit writes a record per changed stream (1,000 at once)."""
    rows = record.rows
    layout = tuple((name, a.shape, a.dtype.str) for name, a in rows.items())
    body = b"".join([a.tobytes() for a in rows.values()])  # C order, as rows_to_bytes
    head = "".join(
        (
            _HEAD_START,
            _json_str(record.stream),
            ',"fields":',
            _json_strs(record.fields),
            ',"keys":',
            _json_strs(record.keys),
            ',"model_version":',
            json.dumps(record.model_version),
            ',"arrays":',
            _layout_json(layout),
            ',"sha256":"',
            hashlib.sha256(body).hexdigest(),
            '"}',
        )
    ).encode()
    return _STREAM_MAGIC + len(head).to_bytes(4, "big") + head + body


_HEAD_START = f'{{"format":"{STREAM_FORMAT}","format_version":{STREAM_FORMAT_VERSION},"stream":'
_json_str = json.encoder.encode_basestring_ascii  # what json.dumps writes a str with


def _json_strs(items: list[str]) -> str:
    return "[" + ",".join(map(_json_str, items)) + "]"


@functools.lru_cache(maxsize=64)
def _layout_json(layout: tuple[tuple[str, tuple[int, ...], str], ...]) -> str:
    """The header's ``arrays`` entry (``[[name, shape, dtype], ...]``) for ``layout``."""
    return json.dumps(
        [[name, list(shape), dt] for name, shape, dt in layout], separators=(",", ":")
    )


def stream_from_bytes(data: bytes, stream: str) -> StreamRecord:
    """The record :func:`stream_to_bytes` wrote for ``stream``; CheckpointError saying what is
    wrong for bytes that are not one, another stream's, or damaged."""
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
    try:
        rows = StateTable.rows_from_bytes(header["arrays"], body)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{what} {exc}") from exc
    keys = header.get("keys")
    if not isinstance(keys, list) or any(a.shape[0] != len(keys) for a in rows.values()):
        raise CheckpointError(f"{what} has arrays of the wrong length")
    return StreamRecord(stream, header["fields"], keys, int(header.get("model_version", 0)), rows)
