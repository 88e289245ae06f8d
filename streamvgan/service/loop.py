"""The consumer loop: poll -> acknowledge the previous batch -> commit steps -> process ->
send -> poll again.

A batch's outputs are sent and the loop polls again at once; the broker acknowledges them
while that poll waits for the next records (two round trips overlapped where there were two
in turn), and only then do the batch's offsets become committable (:meth:`ServiceLoop.settle`).
Everything that commits or writes state (the periodic commit, a checkpoint, a revocation, a
stop) runs when no batch is waiting for its acknowledgements, as when each batch was flushed
before the next poll: the changelog's records hold each stream's state as of the committed
offsets exactly (see :mod:`~streamvgan.service.state`).

:class:`ServiceLoop` is the same for every :class:`~streamvgan.service.processing.Processor`
(the service's and the benchmark's pass-through) and every client library (it talks to the
:mod:`~streamvgan.service.kafka_api` interface). It also keeps what readiness needs (assigned
partitions, the last poll's outcome, the coordinator) and is the rebalance listener.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from streamvgan.service.kafka_api import Consumer, Producer, TransientPollError
from streamvgan.service.metrics import ServiceMetrics
from streamvgan.service.processing import BatchResult, Output, Processor, Records
from streamvgan.service.state import ProduceError, StateStore

log = logging.getLogger(__name__)

#: poll timeout while a batch's outputs await their acknowledgements (so that with no new
#: records the batch is settled at once, not a whole idle poll later: its offsets and the
#: pipeline latency metric would wait for it), and while a commit waits for its changelog
#: acknowledgements, for at most _COMMIT_FAST_S after it began
_SHORT_POLL_MS = 2
_COMMIT_FAST_S = 1.0


class ServiceLoop:
    """Runs batches until ``stop`` is set.

    Parameters
    ----------
    settings
        The service settings (poll size and timeout, commit and checkpoint intervals).
    processor
        What a batch becomes.
    state
        The commit order (offsets, changelog, checkpoints).
    metrics, stats
        Where the loop counts (``stats``: the application's running totals).
    stop
        Set to stop after the batch in hand.
    on_readiness
        Called whenever something readiness depends on changed.
    """

    def __init__(
        self,
        settings: Any,
        processor: Processor,
        state: StateStore,
        metrics: ServiceMetrics,
        stats: Any,
        stop: threading.Event,
        on_readiness: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.engine = getattr(processor, "engine", None)
        self.state = state
        self.metrics = metrics
        self.stats = stats
        self._stop = stop
        self.on_readiness = on_readiness
        self.assigned: set[Any] = set()
        self.coordinator_ok = True  # the group coordinator is reachable (checked each second)
        self.poll_ok = True  # the last poll did not raise (a connection reset, a timeout)
        self._unsettled: _Sent | None = None  # the batch whose outputs await the broker
        self._producer: Producer | None = None  # run()'s, for settling in a revocation

    def run(self, consumer: Consumer, producer: Producer) -> None:
        s = self.settings
        now = time.monotonic()
        last_commit = last_checkpoint = last_lag = now
        failures = 0  # polls in a row that raised a retriable error
        self._producer = producer
        while not self._stop.is_set():
            # while a commit is in progress, polls are short: the changelog goes on being sent
            # and the offsets are committed right after the last acknowledgement, not a whole
            # idle poll later (a kill -9 in between leaves the changelog ahead of the
            # committed offsets: the records re-read then are skipped as already applied, see
            # state.py, but re-reading them costs); after a second without the
            # acknowledgements (an outage), polls are long again
            ticket, timeout_ms = self.state.ticket, s.poll_timeout_ms
            committing = ticket is not None and time.monotonic() - ticket.started < _COMMIT_FAST_S
            if committing or self._unsettled is not None:
                timeout_ms = min(timeout_ms, _SHORT_POLL_MS)
            try:
                records = consumer.poll(timeout_ms, s.poll_max_records)
            except TransientPollError as exc:
                failures += 1
                self._poll_failed(exc, failures)
                continue
            if failures:
                log.warning("polling again after %d failed polls", failures)
                failures = 0
                self.poll_ok = True
                self.on_readiness()
            # the previous batch's outputs were acknowledged while the poll waited (mostly:
            # else this waits for the rest); every batch processed is acknowledged from here
            # to the next send, which is where the commit steps and checkpoints run
            self.settle(producer)
            self.state.advance(consumer)  # the commit in progress, a chunk at a time
            now = time.monotonic()
            if now - last_lag >= 1.0:
                self._housekeeping(consumer)
                last_lag = now
            if s.checkpoint_dir and now - last_checkpoint >= s.checkpoint_interval_s:
                self.state.commit(consumer)
                self.state.checkpoint()
                last_commit = last_checkpoint = time.monotonic()
            elif now - last_commit >= s.commit_interval_s:
                self.state.begin_commit(consumer)
                last_commit = now
            if records:
                self.dispatch(records, producer)
        self.settle(producer)  # the last batch's, before the application's final commit

    def _housekeeping(self, consumer: Consumer) -> None:
        ok = consumer.coordinator_known()
        if ok != self.coordinator_ok:
            log.warning(
                "group coordinator %s",
                "reachable again" if ok else "unreachable: not ready until the broker is back",
            )
            self.coordinator_ok = ok
            self.on_readiness()
        for tp, lag in consumer.lag(list(self.assigned)).items():
            self.metrics.lag.labels(topic=tp[0], partition=str(tp[1])).set(lag)

    def _poll_failed(self, exc: BaseException, failures: int) -> None:
        """A poll raised a retriable error: kafka-python gives up on a connection reset while
        connecting (a proxy or load balancer in front of the broker, a broker restarting) with
        ``KafkaConnectionError``, or on a timeout. Nothing of a batch is lost (offsets are
        committed only after the outputs are acknowledged), so: not ready, back off (0.5 s,
        doubling to 5 s; a stop ends the wait), poll again."""
        delay = min(0.5 * 2 ** min(failures - 1, 4), 5.0)
        if failures == 1:
            log.warning(
                "poll failed (%s): not ready; polling again every %.1f-5 s until the broker "
                "answers",
                exc,
                delay,
            )
        else:
            log.debug("poll failed again (%d in a row): %s", failures, exc)
        self.poll_ok = False
        self.on_readiness()
        self._stop.wait(delay)

    def handle(self, records: Records, producer: Producer) -> BatchResult:
        """One poll entire: process, send, wait for the broker, then its offsets become
        committable (:meth:`dispatch` then :meth:`settle`)."""
        result = self.dispatch(records, producer)
        self.settle(producer)
        return result

    def dispatch(self, records: Records, producer: Producer) -> BatchResult:
        """Process one poll and send its outputs, without waiting for the broker: the batch
        is acknowledged by the next :meth:`settle`."""
        m = self.metrics
        self.settle(producer)  # one batch in flight at most
        self.state.restore_assigned()
        polled_at = time.monotonic()
        result = self.processor.process(records)
        for topic, n in result.consumed.items():
            m.consumed.labels(topic=topic).inc(n)
        if result.already_applied:
            m.already_applied.inc(result.already_applied)
        m.batch_size.observe(result.records)
        errors: list[BaseException] = []
        for out in result.outputs:
            self._send(producer, out).add_errback(errors.append)
        for value in result.score_values:
            m.scores.observe(value)
        m.anomalies.inc(result.anomalies)
        for signal, count in result.anomaly_causes.items():
            m.anomaly_causes.labels(signal=signal).inc(count)
        self._unsettled = _Sent(
            result, errors, polled_at, dict(result.next_offsets), result.touched
        )
        return result

    def settle(self, producer: Producer) -> None:
        """Wait until the broker answered the outputs of the batch in flight (if any; most
        often they were answered already), then hand its offsets to the commit order. Raises
        :class:`ProduceError` if some were refused (its offsets stay uncommitted)."""
        sent = self._unsettled
        if sent is None:
            return
        producer.flush()
        self._unsettled = None
        result, errors, m = sent.result, sent.errors, self.metrics
        if errors:
            raise ProduceError(
                f"{len(errors)} output records were not acknowledged "
                f"(first: {errors[0]!r}); offsets stay uncommitted"
            )
        latency = time.monotonic() - sent.polled_at
        for _ in range(result.records):
            m.latency.observe(latency)
        for topic, n in result.produced.items():
            if n:
                m.produced.labels(topic=topic).inc(n)
        for (topic, reason), n in result.dead_lettered.items():
            m.dead_lettered.labels(topic=topic, reason=reason).inc(n)
        self.state.acknowledged(sent.offsets, sent.touched)
        st = self.stats
        st.consumed += result.records
        st.scored += result.scored
        st.dead_lettered += sum(result.dead_lettered.values())
        st.forecasts += result.forecasts
        st.continuations += result.continuations
        st.batches += 1
        if self.engine is not None:
            m.streams.set(self.engine.n_streams)
            m.model_version.set(self.engine.model_version)
        if log.isEnabledFor(logging.DEBUG):
            for tp, offset in result.next_offsets.items():
                log.debug(
                    'batch partition="%s[%d]" offset="%d" records=%d events=%d %.1fms',
                    *(tp[0], tp[1], offset - 1, result.records, result.scored, 1000 * latency),
                )

    def _send(self, producer: Producer, out: Output) -> Any:
        if out.letter is None:
            return producer.send(out.topic, key=out.key, value=out.value, headers=out.headers)
        try:
            return producer.send(out.topic, key=out.key, value=out.value, headers=out.headers)
        except Exception as exc:
            # a dead letter the producer refuses (too large with the headers) goes without its
            # value, so that a bad record can never stop the partition
            letter = out.letter
            log.warning(
                'the producer refused the dead letter of partition="%s[%d]" offset="%d"; '
                "sending it without its value",
                *(letter.topic, letter.partition, letter.offset),
                exc_info=True,
            )
            letter = dataclasses.replace(
                letter,
                message=f"{letter.message} (original value of "
                f"{len(out.value or b'')} bytes not kept: {exc!r})",
            )
            return producer.send(out.topic, key=out.key, value=b"", headers=letter.headers())

    # -- the rebalance listener (kafka_api.RebalanceListener), called inside poll -------------
    # A revocation first waits for the batch in flight (settle), so no output is in flight
    # then: revoked partitions get their changelog written and their acknowledged offsets
    # committed before they move.

    def on_revoked(self, partitions: set[Any]) -> Mapping[Any, int]:
        if self._producer is not None:
            self.settle(self._producer)
        offsets = self.state.revoke(partitions, self.settings.input_topic)
        for tp in partitions:
            self.assigned.discard(tp)
            with contextlib.suppress(KeyError):  # no lag was recorded for it yet
                self.metrics.lag.remove(tp[0], str(tp[1]))
        if partitions:
            log.info("partitions revoked: %s", _names(partitions))
        self.on_readiness()
        return offsets

    def on_committed(self, offsets: Mapping[Any, int]) -> None:
        self.stats.commits += 1

    def on_assigned(self, partitions: set[Any]) -> None:
        self.assigned.update(partitions)
        self.state.assign(partitions)
        log.info("partitions assigned: %s", _names(partitions))
        self.on_readiness()

    def on_lost(self, partitions: set[Any]) -> None:
        for tp in partitions:
            self.assigned.discard(tp)
        if self._unsettled is not None:
            self._unsettled.lose(partitions)
        self.state.lose(partitions)
        log.warning("partitions lost (evicted from the group): %s", _names(partitions))
        self.on_readiness()


@dataclasses.dataclass
class _Sent:
    """A batch whose outputs were sent and not yet acknowledged."""

    result: BatchResult
    errors: list[BaseException]  # filled by the records' errbacks
    polled_at: float
    offsets: dict[Any, int]  # the next offsets to commit, of partitions still ours
    touched: Mapping[str, int]  # the streams the batch changed -> their input partition

    def lose(self, partitions: set[Any]) -> None:
        """``partitions`` went to another consumer: nothing of theirs is committed here."""
        numbers = {tp[1] for tp in partitions}
        self.offsets = {tp: o for tp, o in self.offsets.items() if tp not in partitions}
        self.touched = {k: p for k, p in self.touched.items() if p not in numbers}


def _names(partitions: set[Any]) -> str:
    return ", ".join(sorted(f"{tp[0]}[{tp[1]}]" for tp in partitions)) or "(none)"
