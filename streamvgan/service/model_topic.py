"""Versioned model weights on a compacted Kafka topic: one trainer publishes, every replica loads.

A model version is the engine's ``export_weights()`` blob (model config + weights, loaded with
``torch.load(weights_only=True)``), cut into chunks no larger than ``chunk_bytes`` so it fits
the broker's message limit. Chunk ``i`` is keyed ``model/i`` (so compaction keeps the newest
chunk of each index) and carries headers: version, index, chunk count, the SHA-256 of the whole
blob. A reader assembles the newest version whose chunks are all present and whose checksum
matches; a corrupt or truncated version is rejected with a log line and counted, and the reader
keeps the model it has.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from streamvgan.errors import CheckpointError

log = logging.getLogger(__name__)

H_VERSION = "streamvgan.model.version"
H_INDEX = "streamvgan.model.chunk"
H_COUNT = "streamvgan.model.chunks"
H_SHA = "streamvgan.model.sha256"
DEFAULT_CHUNK_BYTES = 256 * 1024


def model_topic(group_id: str, input_topic: str) -> str:
    """The model topic's name, derived from the group and the input topic."""
    return f"{group_id}-{input_topic}-model"


def publish(
    producer: Any, topic: str, blob: bytes, version: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> int:
    """Send ``blob`` as model ``version`` (chunked) and wait for the acknowledgements; return
    the number of chunks."""
    digest = hashlib.sha256(blob).hexdigest().encode()
    chunks = [blob[i : i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)] or [b""]
    for index, chunk in enumerate(chunks):
        producer.send(
            topic,
            key=f"model/{index}".encode(),
            value=chunk,
            partition=0,
            headers=[
                (H_VERSION, str(version).encode()),
                (H_INDEX, str(index).encode()),
                (H_COUNT, str(len(chunks)).encode()),
                (H_SHA, digest),
            ],
        )
    producer.flush()
    log.info(
        "published model_version=%d (%d bytes in %d chunks) to %s",
        version,
        len(blob),
        len(chunks),
        topic,
    )
    return len(chunks)


@dataclass
class _Pending:
    count: int
    sha: str
    chunks: dict[int, bytes] = field(default_factory=dict)


class ModelAssembler:
    """Feeds on model-topic records in order; yields complete, verified versions."""

    def __init__(self, on_rejected: Callable[[str], None] | None = None) -> None:
        self._pending: dict[int, _Pending] = {}
        self._on_rejected = on_rejected or (lambda reason: None)
        self.rejected: set[int] = set()

    def add(self, record: Any) -> tuple[int, bytes] | None:
        """Take one record; return ``(version, blob)`` when it completes a valid version."""
        headers = {k: v for k, v in (record.headers or [])}
        try:
            version = int(headers[H_VERSION])
            index = int(headers[H_INDEX])
            count = int(headers[H_COUNT])
            sha = headers[H_SHA].decode()
        except (KeyError, ValueError, AttributeError):
            log.error("rejected model record at offset %s: missing or bad headers", record.offset)
            self._on_rejected("headers")
            return None
        pending = self._pending.setdefault(version, _Pending(count, sha))
        if pending.count != count or pending.sha != sha or not 0 <= index < count:
            log.error("rejected model_version=%d: chunks disagree on count or checksum", version)
            self._reject(version, "inconsistent")
            return None
        pending.chunks[index] = record.value or b""
        if len(pending.chunks) < count:
            return None
        blob = b"".join(pending.chunks[i] for i in range(count))
        del self._pending[version]
        if hashlib.sha256(blob).hexdigest() != sha:
            log.error(
                "rejected model_version=%d: checksum mismatch (truncated or corrupt)", version
            )
            self._reject(version, "checksum")
            return None
        return version, blob

    def _reject(self, version: int, reason: str) -> None:
        self._pending.pop(version, None)
        self.rejected.add(version)
        self._on_rejected(reason)


class ModelFollower:
    """Loads every newer model version from the model topic into ``engine``, in a thread.

    Parameters
    ----------
    engine
        The replica's engine; new versions are installed with ``import_weights``.
    topic
        The model topic.
    make_consumer
        Builds a group-less consumer (``assign()`` only).
    on_installed, on_rejected
        Callbacks for metrics: ``on_installed(version)``, ``on_rejected(reason)``.
    """

    def __init__(
        self,
        engine: Any,
        topic: str,
        make_consumer: Callable[[], Any],
        on_installed: Callable[[int], None] | None = None,
        on_rejected: Callable[[str], None] | None = None,
        poll_ms: int = 500,
    ) -> None:
        self.engine = engine
        self.topic = topic
        self._make_consumer = make_consumer
        self._on_installed = on_installed or (lambda v: None)
        self._on_rejected = on_rejected or (lambda r: None)
        self.poll_ms = poll_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._assembler = ModelAssembler(self._on_rejected)

    def _open(self) -> Any:
        consumer = self._make_consumer()
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return consumer

    def catch_up(self, timeout_s: float = 30.0, idle_ms: int = 300) -> int:
        """Read the topic to its end now and install the newest valid version (used before a
        replica scores its first record). Returns the engine's model version afterwards."""
        if self._consumer is None:
            self._consumer = self._open()
        deadline = time.monotonic() + timeout_s
        tp = TopicPartition(self.topic, 0)
        end = self._consumer.end_offsets([tp]).get(tp, 0)
        while time.monotonic() < deadline:
            got = self._poll_once(idle_ms)
            if not got and self._consumer.position(tp) >= end:
                break
        return self.engine.model_version

    def _poll_once(self, timeout_ms: int) -> int:
        batch = self._consumer.poll(timeout_ms=timeout_ms)
        newest: tuple[int, bytes] | None = None
        n = 0
        for records in batch.values():
            for record in records:
                n += 1
                done = self._assembler.add(record)
                if done is not None and (newest is None or done[0] > newest[0]):
                    newest = done
        if newest is not None and newest[0] > self.engine.model_version:
            try:
                self.engine.import_weights(newest[1], version=newest[0])
            except CheckpointError as exc:
                log.error(
                    "rejected model_version=%d: %s; keeping model_version=%d",
                    newest[0],
                    exc,
                    self.engine.model_version,
                )
                self._on_rejected("load")
            else:
                log.info("installed model_version=%d from %s", newest[0], self.topic)
                self._on_installed(newest[0])
        return n

    def start(self) -> ModelFollower:
        if self._consumer is None:
            self._consumer = self._open()
        self._thread = threading.Thread(
            target=self._run, name="streamvgan-model-follower", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once(self.poll_ms)
            except Exception:  # keep following; a broker hiccup must not kill the replica
                log.exception("model follower poll failed; retrying")
                self._stop.wait(1.0)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
