"""What the service has made durable, and the one order in which it does so.

:class:`StateStore` owns the acknowledged-but-uncommitted input offsets, the streams whose state
changed since the last commit (the dirty set), which input partition each stream lives on, the
partitions waiting for a changelog restore, and the checkpoints. Every path that commits offsets
(the periodic commit, shutdown, a revocation) goes through it, in this order:

1. the outputs of the records are acknowledged by the broker (the loop flushes them, then
   calls :meth:`StateStore.acknowledged`);
2. the changelog records of the streams those records changed are acknowledged;
3. only then the offsets are committed.

So a crash re-reads at most the uncommitted tail, and the committed position never runs ahead
of the outputs or of the stream state (at-least-once; Kafka Streams' changelog design).

The periodic commit does not stall scoring: :meth:`StateStore.begin_commit` takes the
acknowledged offsets and the dirty set as a :class:`_Ticket`; every loop iteration
(:meth:`StateStore.advance`) exports and sends the next ``chunk`` of those states on the
changelog's own producer until ``step_budget_s`` has passed, without waiting (exporting is
~0.1-0.4 ms per stream here: 1,000 at once stalled scoring for that long), and once every
record is acknowledged (:meth:`Producer.settled`, checked each step without waiting) the
ticket's offsets are committed. Each record must hold its stream's
state as of those offsets exactly (a stream moved after a crash replays from them onto that
state, tests/service/test_scaleout.py): a stream not exported yet is exported just before a
batch changes it (:meth:`StateStore.before_change`, called by the processor), so a later
export only sees streams no event changed since. Shutdown, checkpoints and revocations finish
the ticket and write the rest synchronously (:meth:`StateStore.commit`,
:meth:`StateStore.revoke`).

A kill -9 after step 2 and before step 3 leaves the changelog ahead of the committed offsets:
a restart restores states that already hold some of the events it re-reads. So each changelog
record also says which events its state holds: :attr:`StateStore.applied` keeps, per input
partition, the next offset whose events are all applied and acknowledged (set by
:meth:`StateStore.acknowledged`, never cleared by a commit), and each record carries that offset
of its partition as of its export (``streamvgan.state.input-offset``, see
:mod:`~streamvgan.service.changelog`): a ticket's records carry the ticket's offsets (they hold
the state as of those exactly, see above), a synchronous write the current ones (everything
processed is acknowledged then). A restore hands back, per stream, the offset its record
carried (:attr:`StateStore.already_applied`, filled before any record of the partition is
processed), and the processor skips an event of that stream and partition below it: the event
is in the state, and its outputs were acknowledged before the record was written (step 1
before 2), so its offset counts as consumed but it is neither applied nor scored again
(``streamvgan_state_events_already_applied_total``). An entry goes once an event of its stream
reaches the offset, or once the partition's position passes every entry of the partition.
Records without the header (written before it existed) restore as before, nothing skipped.
Still at least once: events of a stream whose record of an interrupted commit was never
acknowledged are applied once (its older record is restored) but scored twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamvgan.errors import StreamVGANError
from streamvgan.service import checkpoints
from streamvgan.service.changelog import StateChangelog
from streamvgan.service.kafka_api import Consumer, Producer, TopicPartition
from streamvgan.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class ProduceError(StreamVGANError, RuntimeError):
    """The broker did not acknowledge some outputs; offsets were not committed."""


@dataclass
class _Ticket:
    """A commit in progress: offsets to commit once the changelog ``states`` are acked."""

    offsets: dict[TopicPartition, int]
    todo: dict[str, int]  # stream -> input partition, state not exported yet
    applied: dict[int, int]  # input partition -> next offset the exported states hold
    states: list[tuple[str, int, bytes | None]] = field(default_factory=list)  # exported
    sent: int = 0
    errors: list[BaseException] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class StateStore:
    """Offsets, the changelog, checkpoints, and the commit order (see the module docstring).

    Parameters
    ----------
    engine
        The engine whose streams are written and restored; None for a stateless processor
        (the benchmark's pass-through), which only commits offsets.
    metrics
        The service's metrics.
    checkpoint_dir
        Where checkpoints go ('' or None: none).
    checkpoint_info
        Returns the ``service.json`` written beside each checkpoint.
    checkpointed_revision
        ``engine.revision`` of the checkpoint the engine was loaded from (nothing to rewrite).
    on_forget
        Called with each stream dropped because its partition moved to another replica.
    stats
        Running totals (attributes ``commits`` and ``checkpoints``, incremented here).
    chunk
        Stream states exported and sent per step while a commit is in progress.
    step_budget_s
        A step sends chunks until this much time has passed (at least one chunk), so a loop
        iteration spends at most about this long on the changelog.
    """

    def __init__(
        self,
        engine: Any,
        metrics: ServiceMetrics,
        *,
        checkpoint_dir: str | None = None,
        checkpoint_info: Callable[[], dict[str, Any]] | None = None,
        checkpointed_revision: int | None = None,
        on_forget: Callable[[str], None] | None = None,
        stats: Any = None,
        chunk: int = 25,
        step_budget_s: float = 0.005,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.checkpoint_dir = checkpoint_dir
        self._checkpoint_info = checkpoint_info or dict
        self.checkpointed_revision = checkpointed_revision
        self._on_forget = on_forget or (lambda stream: None)
        self.lock = threading.Lock()
        self.pending: dict[TopicPartition, int] = {}  # next offset, acknowledged, not committed
        self.dirty: dict[str, int] = {}  # stream -> input partition, changed since the commit
        self.stream_partition: dict[str, int] = {}
        self.to_restore: set[int] = set()
        #: input partition -> next offset whose events are all applied and acknowledged
        self.applied: dict[int, int] = {}
        #: stream -> (input partition, offset): its restored state holds its events of that
        #: partition below the offset (the processor skips them, and drops the entry once an
        #: event reaches it); empty but after a restore
        self.already_applied: dict[str, tuple[int, int]] = {}
        self._replay_until: dict[int, int] = {}  # partition -> highest offset of its entries
        self.changelog: StateChangelog | None = None
        self.producer: Producer | None = None
        self.stats = stats if stats is not None else _Totals()
        self.chunk = chunk
        self.step_budget_s = step_budget_s
        self.ticket: _Ticket | None = None

    def attach_changelog(self, changelog: StateChangelog) -> None:
        self.changelog = changelog

    # -- 1. outputs acknowledged ----------------------------------------------------------------

    def acknowledged(self, next_offsets: Mapping[Any, int], touched: Mapping[str, int]) -> None:
        """The outputs of a batch were acknowledged: its offsets may be committed once the
        state of the streams it changed (``touched``: stream -> input partition) is written."""
        if self.changelog is not None:
            if touched:
                with self.lock:
                    self.dirty.update(touched)
                self.stream_partition.update(touched)
            applied = self.applied
            for tp, offset in next_offsets.items():
                applied[tp[1]] = offset
            if self._replay_until:
                self._replay_passed(next_offsets)
        with self.lock:
            self.pending.update(next_offsets)

    # -- 2. changelog acknowledged --------------------------------------------------------------

    def _send_states(
        self,
        states: list[tuple[str, int, bytes | None]],
        errors: list[BaseException],
        applied: dict[int, int],
    ) -> None:
        """Send ``states``, exported when ``applied`` were the applied offsets."""
        assert self.producer is not None and self.changelog is not None, "not running"
        for handle in self.changelog.send(self.producer, states, applied):
            handle.add_errback(errors.append)

    def _changelog_failed(
        self, states: Iterable[tuple[str, int, bytes | None]], errors: list
    ) -> None:
        with self.lock:
            for k, p, _ in states:
                self.dirty.setdefault(k, p)
        raise ProduceError(
            f"{len(errors)} changelog records were not acknowledged "
            f"(first: {errors[0]!r}); offsets stay uncommitted"
        )

    def write_changelog(self, partitions: set[int] | None = None) -> None:
        """Send the state of streams changed since the last commit (of ``partitions`` only, if
        given) and wait for the broker: the state is never behind the committed offsets."""
        self._finish_ticket()
        if self.changelog is None or not self.dirty:
            return
        with self.lock:
            if partitions is None:
                dirty, self.dirty = self.dirty, {}
            else:
                dirty = {k: p for k, p in self.dirty.items() if p in partitions}
                for k in dirty:
                    del self.dirty[k]
        if not dirty:
            return
        assert self.producer is not None, "the changelog is written only while running"
        errors: list[BaseException] = []
        # everything processed is acknowledged here (between batches): the states hold exactly
        # the events below the applied offsets
        states = self.changelog.export(self.engine, dirty)
        self._send_states(states, errors, self.applied)
        self.producer.flush()
        if errors:
            self._changelog_failed(states, errors)
        self.metrics.state_written.inc(len(dirty))

    def begin_commit(self, consumer: Consumer) -> None:
        """The periodic commit, without stalling the loop: with no changelog (or nothing
        changed) the acknowledged offsets are committed now; otherwise a ticket takes them and
        the dirty set, and :meth:`advance` writes the changelog and then commits them. While a
        ticket is in progress this does nothing (the next interval takes what came since)."""
        if self.ticket is not None:
            return
        if self.changelog is None or not self.dirty:
            self._commit_offsets(consumer, self.take_pending())
            return
        with self.lock:
            dirty, self.dirty = self.dirty, {}
            offsets, self.pending = self.pending, {}
        self.ticket = _Ticket(offsets, dirty, dict(self.applied))

    def _export(self, ticket: _Ticket, streams: Iterable[str]) -> None:
        assert self.changelog is not None
        part = {s: ticket.todo.pop(s) for s in streams}
        ticket.states += self.changelog.export(self.engine, part)

    def before_change(self, streams: Iterable[str]) -> None:
        """The engine is about to change ``streams`` (the processor calls this before each
        ``engine.process``): export those of the commit in progress that are not exported
        yet, so each record holds its stream's state as of the commit's offsets exactly."""
        ticket = self.ticket
        if ticket is not None and ticket.todo:
            todo = ticket.todo
            due = [s for s in dict.fromkeys(streams) if s in todo]
            if due:
                self._export(ticket, due)

    def advance(self, consumer: Consumer) -> None:
        """One step of the commit in progress (each loop iteration): export and send the next
        chunks of changelog records until ``step_budget_s`` has passed; once all were sent and
        the broker answered each (never waiting for it here), commit the ticket's offsets.
        Raises :class:`ProduceError` if the broker refused changelog records."""
        ticket = self.ticket
        if ticket is None:
            return
        assert self.producer is not None
        until = time.monotonic() + self.step_budget_s
        while ticket.todo or ticket.sent < len(ticket.states):
            if ticket.sent == len(ticket.states):
                self._export(ticket, list(ticket.todo)[: self.chunk])
            part = ticket.states[ticket.sent : ticket.sent + self.chunk]
            self._send_states(part, ticket.errors, ticket.applied)
            ticket.sent += len(part)
            if time.monotonic() >= until:
                return
        # Everything is sent. The loop does not wait for the acknowledgements (a round trip,
        # tens of ms for 1,000 records of ~3 KB, which stalled scoring): it goes on scoring
        # and a later step commits once the broker answered every record. A crash or an
        # outage before then commits nothing (the records are re-read after a restart).
        if not self.producer.settled():
            return
        self.producer.flush()  # returns at once; gives up on failed records (errbacks)
        self.ticket = None
        if ticket.errors:
            self._restore_offsets(ticket.offsets)
            self._changelog_failed(ticket.states, ticket.errors)
        self.metrics.state_written.inc(len(ticket.states))
        self._commit_offsets(consumer, ticket.offsets)

    def _finish_ticket(self) -> None:
        """Send the rest of the commit in progress and wait for it; its offsets go back to
        ``pending`` (the caller commits them with what came since)."""
        ticket = self.ticket
        if ticket is None:
            return
        assert self.producer is not None
        self._export(ticket, list(ticket.todo))
        self._send_states(ticket.states[ticket.sent :], ticket.errors, ticket.applied)
        ticket.sent = len(ticket.states)
        self.producer.flush()
        self.ticket = None
        self._restore_offsets(ticket.offsets)
        if ticket.errors:
            self._changelog_failed(ticket.states, ticket.errors)
        self.metrics.state_written.inc(len(ticket.states))

    def _restore_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self.lock:
            for tp, offset in offsets.items():
                self.pending.setdefault(tp, offset)  # a newer one acknowledged since wins

    # -- 3. commit ------------------------------------------------------------------------------

    def take_pending(self, partitions: Iterable[Any] | None = None) -> dict[TopicPartition, int]:
        with self.lock:
            if partitions is None:
                taken, self.pending = self.pending, {}
            else:
                taken = {tp: self.pending.pop(tp) for tp in partitions if tp in self.pending}
        return taken

    def commit(self, consumer: Consumer) -> None:
        """Changelog first (the commit in progress, then every stream changed since), then
        the offsets acknowledged so far, waiting for both (shutdown and checkpoints)."""
        self.write_changelog()
        self._commit_offsets(consumer, self.take_pending())

    def _commit_offsets(self, consumer: Consumer, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``; a failed commit keeps them pending (a restart re-reads those
        records)."""
        if not offsets:
            return
        try:
            consumer.commit(offsets, timeout_ms=10_000)  # bounded: the broker may be down
        except Exception as exc:
            log.warning(
                "offset commit failed (%r); the records will be re-read after a restart", exc
            )
            self._restore_offsets(offsets)
            return
        self.stats.commits += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "committed %s", {f"{tp[0]}[{tp[1]}]": offset for tp, offset in offsets.items()}
            )

    # -- rebalances ---------------------------------------------------------------------------

    def revoke(self, partitions: set[Any], input_topic: str) -> dict[TopicPartition, int]:
        """Partitions leave: write their changelog, return their offsets to commit (none if the
        changelog could not be written), forget their streams."""
        numbers = {tp[1] for tp in partitions if tp[0] == input_topic}
        try:
            self.write_changelog(numbers)
        except Exception as exc:  # state not written: do not commit past it
            log.warning("changelog write on revocation failed (%r); not committing", exc)
            self.take_pending(partitions)
            offsets = {}
        else:
            offsets = self.take_pending(partitions)
        if self.changelog is not None:
            self.drop_partitions(numbers)
        return offsets

    def lose(self, partitions: set[Any]) -> None:
        """Evicted from the group: the partitions already belong to someone else, so nothing of
        theirs is committed or written; their records will be scored again there."""
        self.take_pending(partitions)
        numbers = {tp[1] for tp in partitions}
        ticket = self.ticket
        if ticket is not None:  # the rest of a commit in progress: only for partitions kept
            for tp in [tp for tp in ticket.offsets if tp in partitions]:
                del ticket.offsets[tp]
            unsent = [s for s in ticket.states[ticket.sent :] if s[1] not in numbers]
            ticket.states[ticket.sent :] = unsent
            ticket.todo = {k: p for k, p in ticket.todo.items() if p not in numbers}
        with self.lock:
            self.dirty = {k: p for k, p in self.dirty.items() if p not in numbers}
        if self.changelog is not None:
            self.drop_partitions(numbers)

    def assign(self, partitions: set[Any]) -> None:
        with self.lock:
            self.to_restore.update(tp[1] for tp in partitions)

    def restore_assigned(self) -> None:
        """Install the changelog state of newly assigned partitions (the loop's thread, before
        any of their records is processed)."""
        if self.changelog is None or not self.to_restore:
            return
        with self.lock:
            partitions, self.to_restore = sorted(self.to_restore), set()
        report = self.changelog.restore(self.engine, partitions)
        self.metrics.state_restored.inc(report.restored)
        self.metrics.restore_duration.observe(report.seconds)
        for p in partitions:
            carried = report.applied.get(p, {})
            if carried:
                self._replay_until[p] = max(carried.values())
                for stream, offset in carried.items():
                    self.already_applied[stream] = (p, offset)
            log.info(
                'restored partition="%s[%d]": %d stream states carry the input offset they '
                "were written at (highest %s); their events below it are already applied and "
                "will be skipped",
                self.changelog.topic,
                p,
                len(carried),
                max(carried.values()) if carried else "-",
            )

    def _replay_passed(self, next_offsets: Mapping[Any, int]) -> None:
        """Drop the entries of :attr:`already_applied` of partitions whose position passed
        them all (streams with no event since the restore would keep them otherwise)."""
        for tp, offset in next_offsets.items():
            until = self._replay_until.get(tp[1])
            if until is not None and offset >= until:
                self._forget_replayed({tp[1]})

    def _forget_replayed(self, partitions: set[int]) -> None:
        for p in partitions:
            self._replay_until.pop(p, None)
        entries = self.already_applied
        for stream in [s for s, (p, _) in entries.items() if p in partitions]:
            del entries[stream]

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget the streams of partitions that moved to another replica."""
        for p in partitions:
            self.applied.pop(p, None)
        if self._replay_until:
            self._forget_replayed(partitions)
        gone = [st for st, p in self.stream_partition.items() if p in partitions]
        for stream in gone:
            self.engine.drop_stream(stream)
            del self.stream_partition[stream]
            self._on_forget(stream)
        if gone:
            log.info(
                "dropped the state of %d streams of revoked partitions %s",
                len(gone),
                sorted(partitions),
            )

    def forget_stream(self, stream: str) -> None:
        """The engine evicted ``stream`` (called inside ``engine.process``)."""
        self.stream_partition.pop(stream, None)
        self.already_applied.pop(stream, None)  # its restored state is gone
        with self.lock:
            self.dirty.pop(stream, None)
        if self.ticket is not None:  # as the dirty set: no record for an evicted stream
            self.ticket.todo.pop(stream, None)

    # -- checkpoints --------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Write a checkpoint of the engine, unless nothing changed since the last one."""
        if not self.checkpoint_dir or self.engine is None:
            return
        engine = self.engine
        revision = engine.revision  # read before saving: a change during the save counts
        if revision == self.checkpointed_revision:
            self.metrics.checkpoint_skipped.inc()
            log.debug("checkpoint skipped: nothing changed since the last one")
            return
        start = time.monotonic()
        try:
            path = checkpoints.save_checkpoint(engine, self.checkpoint_dir, self._checkpoint_info())
        except Exception:
            log.exception(
                "checkpoint to %s failed; the previous one stays current", self.checkpoint_dir
            )
            return
        self.checkpointed_revision = revision
        self.stats.checkpoints += 1
        self.metrics.checkpoint_last_success.set(time.time())
        log.info(
            "checkpoint %s written in %.2fs (model_version=%d, streams=%d)",
            path,
            time.monotonic() - start,
            engine.model_version,
            engine.n_streams,
        )


class _Totals:
    commits = 0
    checkpoints = 0
