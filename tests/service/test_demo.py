"""`streamvgan demo` end to end on a shortened replay (embedded broker, service, summary,
PNG), and `streamvgan bench` on tiny numbers."""

from __future__ import annotations

import importlib.util
import re

import pytest

from streamvgan.cli import main
from streamvgan.tools.demo import JUDGE_AFTER, Injection, _found, inject, load_sp500

pytestmark = pytest.mark.kafka

CHEAP = ["--engine-param", "first_fit_steps=2", "--engine-param", "fit_steps=1",
         "--engine-param", "fit_every=500", "--engine-param", "window=32",
         "--engine-param", "burn_in=8", "--engine-param", "batch_size=8"]


def test_sp500_is_bundled_and_injections_land_where_said():
    dates, series = load_sp500()
    assert len(dates) == 1257 and len(series) == 10
    injected, injections = inject(series)
    assert [i.stream for i in injections] == ["AAPL", "MSFT", "JPM", "XOM"]
    for inj in injections:
        diff = injected[inj.stream] - series[inj.stream]
        changed = sorted(int(i) for i in (diff != 0).nonzero()[0])
        assert changed == list(range(inj.start, inj.start + inj.length))


def test_summary_judges_the_whole_injected_window_as_the_png_draws_it():
    """A 40-day level shift whose scores pass the threshold only from its 10th day on is
    flagged (the PNG draws those days red): the summary looks at every injected day and the
    JUDGE_AFTER days after, not just the first 3 (which said "not flagged" before)."""
    dates = [f"d{i}" for i in range(300)]
    scores = {d: 0.2 for d in dates}
    for day in range(110, 140):  # days 10-39 of the shift
        scores[dates[day]] = 0.995
    shift = Injection("XOM", 100, 40, "level_shift", 4.0)
    spike = Injection("XOM", 200, 1, "spike", 8.0)
    scores[dates[200 + JUDGE_AFTER]] = 0.999  # the score reacts on the last judged day
    scores[dates[200 + JUDGE_AFTER + 1]] = 1.0  # and once more after it: not counted
    (det_shift, det_spike) = _found({"XOM": list(scores.items())}, dates, [shift, spike], 0.99)
    assert det_shift.flagged and det_shift.flagged_days == 30
    assert det_shift.scored_days == 40 + JUDGE_AFTER
    assert det_spike.flagged_days == 1 and det_spike.scored_days == 1 + JUDGE_AFTER
    # only 0.999 and 1.0 (2 of 300 days, under 1%) are above the shift's best 0.995
    assert det_shift.top and det_spike.top


def test_demo_runs_end_to_end_on_its_own_broker(tmp_path, capsys):
    out = tmp_path / "demo.png"
    rc = main(["demo", "--days", "160", "--out", str(out), *CHEAP])
    assert rc == 0
    text = capsys.readouterr().out
    assert re.search(r"events scored\s+1,600 from 10 streams", text), text
    assert re.search(r"dead-lettered\s+3 malformed records", text), text
    assert re.search(r"injected anomalies \d/4 flagged", text), text
    # one line per injection, judged on its whole window (the XOM shift lasts 160 // 30 days)
    assert re.search(r"XOM\s+days \d+-\d+\s+level_shift\s+\+4 sd\s+(flagged on \d+ of 7 days|"
                     r"not flagged on any of 7 days)", text), text
    assert out.stat().st_size > 20_000  # a real figure
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_prints_a_markdown_table(kafka_broker, capsys):
    clients = ["kafka-python"]
    if importlib.util.find_spec("confluent_kafka") is not None:  # the dev extra brings it
        clients.append("confluent-kafka")
    rc = main(["bench", "--bootstrap-servers", kafka_broker.bootstrap_servers,
               "--streams", "1,20", "--events", "200", "--latency-s", "1",
               "--latency-rate", "100", "--setting", "state_changelog=false",
               "--kafka-clients", ",".join(clients)])
    assert rc == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ")]
    assert len(lines) == 1 + 2 * len(clients) and lines[0].startswith("| streams")
    expected = [(n, c) for n in ("1", "20") for c in clients]  # each client, same run
    for row, (n, client) in zip(lines[1:], expected):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == n and cells[-1] == client
        a, b, ratio = (float(c.replace(",", "")) for c in cells[2:5])
        # the table prints the ratio to 2 decimals and the rates to whole events/s, so b / a
        # of the printed rates is off by up to half a unit of each rate, relative (CI once
        # printed 752 and 28,571 with the ratio 38.00: 37.993 from the rounded rates)
        rounding = 0.0051 + (b / a) * (0.5 / a + 0.5 / b)
        assert a > 0 and b > 0 and ratio == pytest.approx(b / a, abs=rounding)


def test_bench_repeats_print_medians_and_ranges(kafka_broker, capsys):
    rc = main(["bench", "--bootstrap-servers", kafka_broker.bootstrap_servers,
               "--streams", "1", "--events", "100", "--latency-s", "1", "--latency-rate", "50",
               "--setting", "state_changelog=false", "--repeats", "2"])
    assert rc == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ")]
    assert len(lines) == 2  # the header and one row for the two runs
    cells = [c.strip() for c in lines[1].strip("|").split("|")]
    ranged = re.compile(r"^([\d,]+) \(([\d,]+)-([\d,]+)\)$")
    for cell in (cells[2], cells[3]):  # events/s of the pass-through and the service
        median, low, high = (float(x.replace(",", "")) for x in ranged.match(cell).groups())
        assert 0 < low <= median <= high
    assert float(cells[4]) > 0  # the median of the two runs' ratios


def test_bench_rejects_a_setting_it_cannot_change(capsys):
    # checked before any broker is started or contacted
    assert main(["bench", "--bootstrap-servers", "127.0.0.1:1", "--setting", "bogus=1"]) != 0
    assert main(["bench", "--bootstrap-servers", "127.0.0.1:1", "--setting", "seed=3"]) != 0
    assert main(["bench", "--bootstrap-servers", "127.0.0.1:1", "--kafka-clients", "java"]) != 0
    assert main(["bench", "--bootstrap-servers", "127.0.0.1:1", "--repeats", "0"]) != 0
