"""Replay: NAB and generic CSV layouts become valid input events; the CLI produces them."""

from __future__ import annotations

import gzip

import pytest

from streamvgan.cli import main
from streamvgan.errors import InvalidInputError
from streamvgan.tools import replay
from streamvgan.tools.replay import CsvEvent, convert_timestamp, read_csv_events
from streamvgan.service.wire import decode_event


def _write(path, text):
    path.write_text(text)
    return path


def test_nab_layout_is_one_univariate_stream(tmp_path):
    path = _write(tmp_path / "ec2_cpu_utilization_5f5533.csv",
                  "timestamp,value\n2014-02-14 14:27:00,51.846\n2014-02-14 14:32:00,44.508\n")
    events = list(read_csv_events(path))
    assert [(e.stream, e.ts, e.values) for e in events] == [
        ("ec2_cpu_utilization_5f5533", "2014-02-14 14:27:00", {"value": 51.846}),
        ("ec2_cpu_utilization_5f5533", "2014-02-14 14:32:00", {"value": 44.508}),
    ]
    decoded = decode_event(events[0].value(), events[0].key())
    assert decoded.stream == "ec2_cpu_utilization_5f5533" and decoded.values == {"value": 51.846}


def test_nab_result_files_use_the_value_column(tmp_path):
    path = _write(tmp_path / "r.csv", "timestamp,value,anomaly_score,label\n"
                                      "2015-02-26 21:42:53,8,0.0,0\n")
    assert [e.values for e in read_csv_events(path, stream="tw")] == [{"value": 8.0}]


def test_generic_layout_multivariate_and_split(tmp_path):
    path = _write(tmp_path / "host.csv",
                  "time,cpu,mem\n1700000000,0.5,0.25\n1700000060,0.75,\n1700000120,1,0.5\n")
    events = list(read_csv_events(path, stream="host-1"))
    assert [(e.ts, e.values) for e in events] == [
        (1_700_000_000_000, {"cpu": 0.5, "mem": 0.25}),  # epoch seconds -> milliseconds
        (1_700_000_120_000, {"cpu": 1.0, "mem": 0.5}),  # the row with an empty cell is skipped
    ]
    assert decode_event(events[0].value()).values == {"cpu": 0.5, "mem": 0.25}
    split = list(read_csv_events(path, stream="host-1", split_columns=True))
    assert [(e.stream, e.values) for e in split[:2]] == [
        ("host-1/cpu", {"value": 0.5}), ("host-1/mem", {"value": 0.25})]
    only = list(read_csv_events(path, value_columns=["mem"]))
    assert [e.values for e in only] == [{"value": 0.25}, {"value": 0.5}]


def test_gzip_and_bad_files(tmp_path):
    gz = tmp_path / "s.csv.gz"
    with gzip.open(gz, "wt") as f:
        f.write("date,x\n2024-01-01,1\n2024-01-02,2\n")
    assert [e.stream for e in read_csv_events(gz)] == ["s", "s"]
    with pytest.raises(InvalidInputError, match="no timestamp column"):
        list(read_csv_events(_write(tmp_path / "n.csv", "a,b\n1,2\n")))
    with pytest.raises(InvalidInputError, match="not in header"):
        list(read_csv_events(gz, value_columns=["y"]))
    assert convert_timestamp("1700000000123") == 1700000000123
    with pytest.raises(InvalidInputError):
        convert_timestamp("tomorrow")


@pytest.mark.kafka
def test_replay_command_produces_paced_events(kafka, tmp_path):
    rows = "".join(f"2024-01-01 00:{i // 60:02d}:{i % 60:02d},{i}\n" for i in range(40))
    path = _write(tmp_path / "cpu.csv", "timestamp,value\n" + rows)
    topic = kafka.topic("replay")
    rc = main(["replay", str(path), "--topic", topic, "--stream", "host-9/cpu", "--rate", "100",
               "--bootstrap-servers", kafka.bootstrap_servers])
    assert rc == 0
    records = kafka.read(topic, 40, timeout_s=20)
    assert len(records) == 40
    events = [decode_event(r.value, r.key) for r in records]
    assert {e.stream for e in events} == {"host-9/cpu"}
    assert [e.values["value"] for e in events] == [float(i) for i in range(40)]


class _FakeClock:
    """Stands in for the ``time`` module of replay: sleeping advances a virtual clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


class _RecordingProducer:
    def __init__(self, clock: _FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str, bytes]] = []
        self.flushed = False

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((self.clock.now, topic, key))

    def flush(self) -> None:
        self.flushed = True


@pytest.mark.parametrize("rate, gap", [(100.0, 0.01), (4.0, 0.25), (None, 0.0)])
def test_replay_paces_events_at_the_rate(monkeypatch, rate, gap):
    """Event n leaves at n / rate seconds after the first (on a virtual clock, so the test
    asserts the schedule, not the speed of this machine); without a rate, nothing waits."""
    clock = _FakeClock()
    monkeypatch.setattr(replay, "time", clock)
    producer = _RecordingProducer(clock)
    events = [CsvEvent("s", i, {"value": float(i)}) for i in range(40)]
    assert replay.produce_events(producer, "topic", events, rate=rate) == 40
    times = [t - 1000.0 for t, _, _ in producer.sent]
    assert times == pytest.approx([n * gap for n in range(40)], abs=1e-9)
    assert producer.flushed
