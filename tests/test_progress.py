"""The progress helper of evaluate, bench and demo: a tqdm bar on a terminal, dated log lines
(at most one per interval, and a last one) when not on one."""

from __future__ import annotations

import logging

from streamvgan.progress import Progress


def test_log_lines_when_not_on_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="streamvgan.progress")
    with Progress(4, "NAB files", unit="file", terminal=False, interval_s=0.0) as bar:
        for k in range(4):
            bar.update(1, note=f"file {k}")
    lines = [r.getMessage() for r in caplog.records]
    # one per update (interval 0); none at close, as the last one already said it all
    assert len(lines) == 4
    assert lines[0].startswith("NAB files: 1/4 (25%) files in ") and lines[0].endswith("; file 0")
    assert "s left" in lines[0] and lines[-1].startswith("NAB files: 4/4 (100%)")
    assert lines[-1].endswith("; file 3")


def test_log_lines_are_spaced_by_the_interval(caplog):
    caplog.set_level(logging.INFO, logger="streamvgan.progress")
    with Progress(None, "scored", unit="event", terminal=False, interval_s=3600) as bar:
        for n in range(0, 1000, 100):
            bar.set(n)
    # nothing within the hour, then the line at close; no total, so no percentage
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["scored: 900 events"]


def test_a_bar_on_a_terminal(capsys, caplog):
    with Progress(3, "runs", unit="run", terminal=True) as bar:
        bar.update(2, note="snaive on sine")
        logging.getLogger("streamvgan.test").warning("a log line above the bar")
        bar.update(1)
    err = capsys.readouterr().err
    assert "runs: 100%" in err and "3/3" in err and "snaive on sine" in err
    assert not [r for r in caplog.records if r.name == "streamvgan.progress"]  # no log lines
