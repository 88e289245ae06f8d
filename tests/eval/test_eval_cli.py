"""``streamvgan evaluate ...`` through the real CLI parser, and ``evaluate all`` end to end."""

from __future__ import annotations

import argparse
import json

import pytest

from streamvgan.eval import commands, report


def _parser():
    parser = argparse.ArgumentParser(prog="streamvgan")
    commands.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _main(argv):
    try:
        from streamvgan.cli import main
    except ImportError:  # the CLI's other command groups are not there: use ours alone
        args = _parser().parse_args(argv)
        return args.func(args)
    return main(argv)


def test_every_benchmark_is_registered():
    parser = _parser()
    for cmd in ("nab", "forecast", "generation", "all"):
        argv = ["evaluate", cmd, "--out", "x"] + (["--data", "d"] if cmd == "nab" else [])
        assert callable(parser.parse_args(argv).func)
    args = parser.parse_args(
        ["evaluate", "nab", "--data", "d", "--out", "o", "--detectors", "hst,zscore",
         "--files", "realTraffic/*,*nyc*", "--params", '{"hst": {"height": 4}}']
    )
    assert args.detectors == ["hst", "zscore"]
    assert args.files == ["realTraffic/*", "*nyc*"] and args.jobs == 2
    assert args.params == {"hst": {"height": 4}}


def test_bad_params_json_is_rejected(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["evaluate", "forecast", "--out", "o", "--params", "{nope"])
    assert "is not JSON" in capsys.readouterr().err


def test_evaluate_nab_command(nab_root, tmp_path, capsys):
    rc = _main(["evaluate", "nab", "--data", str(nab_root), "--out", str(tmp_path),
                "--detectors", "zscore", "--files", "*speed_7578.csv", "--jobs", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| contextOSE | 69.90 | 66.98 | 73.18 | published |" in out
    assert (tmp_path / "zscore" / "realTraffic" / "zscore_speed_7578.csv").exists()
    assert set(json.loads((tmp_path / "scores.json").read_text())) == {"zscore"}
    assert (tmp_path / "nab.md").read_text().strip() == out.strip()


def test_evaluate_forecast_command(tmp_path, capsys):
    rc = _main(["evaluate", "forecast", "--out", str(tmp_path), "--models", "last,snaive",
                "--series", "airline"])
    assert rc == 0
    rows = json.loads((tmp_path / "forecast.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["last", "snaive"]
    assert "| airline | last | 12 |" in capsys.readouterr().out


def test_evaluate_all_baselines_end_to_end(nab_root, tmp_path):
    text = report.run_all(
        tmp_path, nab_root, jobs=1, include_streamvgan=False,
        nab_files=["realTraffic/speed_7578.csv"], forecast_series=["airline"],
        generation_datasets=("sines",), generation_origins=30, generation_steps=10,
    )
    for name in ("README.md", "nab.md", "forecast.md", "generation.md", "timings.json"):
        assert (tmp_path / name).exists(), name
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["forecast_airline.png", "generation_sines.png", "nab_speed_7578.png"]
    assert all((tmp_path / p).stat().st_size > 5000 for p in pngs)
    assert "## NAB" in text and "## Time" in text and "![nab_speed_7578]" in text
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {
        "nab", "forecast", "generation",
    }


def test_ablation_table_reads_each_benchmark():
    from streamvgan.eval import forecast, generation

    fc = forecast.ForecastReport(rows=[
        forecast.ForecastRow("a", "streamvgan", 3, 10, 1.0, 1.0, 0.5, 0.8, 0.3, "model", 1.0),
        forecast.ForecastRow("b", "streamvgan", 3, 10, 1.0, 1.0, 1.5, 0.6, 0.3, "model", 1.0),
    ])
    gen = generation.GenerationReport(rows=[
        generation.GenerationRow("sines", "streamvgan_noadv", 10, 0.2, 0.0, 0.1, 0.05, 1, 1),
    ])
    table = report.ablation_table(None, fc, gen)
    assert "| streamvgan | n/a | n/a | n/a | 1.000 | 0.70 | n/a | n/a | n/a | n/a |" in table
    noadv = "| streamvgan_noadv | n/a | n/a | n/a | n/a | n/a | 0.200 | n/a | 0.1000 | n/a |"
    assert noadv in table
