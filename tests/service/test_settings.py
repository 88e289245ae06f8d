"""Settings: precedence flag > STREAMVGAN_* env > TOML file > default, validation, --help."""

from __future__ import annotations

import argparse

import pytest

from streamvgan.errors import ConfigurationError
from streamvgan.service.settings import Settings, add_arguments, settings_from_args


def _parse(argv, env=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(argv), env=env or {})


def _toml(tmp_path, text):
    path = tmp_path / "streamvgan.toml"
    path.write_text(text)
    return str(path)


def test_defaults():
    s = _parse([])
    assert s.bootstrap_servers == "localhost:9092"
    assert s.input_topic == "events"
    assert (s.scores_topic, s.forecasts_topic, s.continuations_topic, s.dlq_topic) == (
        "events.scores", "events.forecasts", "events.continuations", "events.dlq")
    assert s.forecast_every == 1 and s.alert_threshold == 0.99 and s.metrics_port == 8000


def test_precedence_flag_over_env_over_toml_over_default(tmp_path):
    config = _toml(tmp_path, 'group_id = "from-toml"\ncommit_interval_s = 2\n'
                             'horizon = 24\nmetrics-port = 9001\n')
    env = {"STREAMVGAN_GROUP_ID": "from-env", "STREAMVGAN_HORIZON": "36"}
    s = _parse(["--config", config, "--group-id", "from-flag"], env)
    assert s.group_id == "from-flag"  # flag beats env and TOML
    assert s.horizon == 36  # env beats TOML
    assert s.commit_interval_s == 2.0 and s.metrics_port == 9001  # TOML beats defaults
    assert s.input_topic == "events"  # default where nothing is set


def test_config_file_from_env_and_engine_table(tmp_path):
    config = _toml(tmp_path, 'input_topic = "metrics"\n[engine]\nfit_steps = 3\nhidden_size = 8\n')
    env = {"STREAMVGAN_CONFIG": config, "STREAMVGAN_ENGINE_PARAMS": '{"fit_steps": 5}'}
    s = _parse(["--engine-param", "batch_size=4"], env)
    assert s.input_topic == "metrics" and s.dlq_topic == "metrics.dlq"
    assert s.engine_params == {"fit_steps": 5, "hidden_size": 8, "batch_size": 4}
    params = s.engine_config_params()
    assert params["horizon"] == 12 and params["fit_every"] == 1000 and params["fit_steps"] == 5


def test_settings_and_the_engine_share_one_name_per_concept():
    """fit_every is the engine's, the River adapters' and the service's name (it was
    fine_tune_every in the service); every named setting is an EngineConfig parameter."""
    from streamvgan.engine import EngineConfig

    s = _parse(["--fit-every", "250", "--horizon", "6"])
    config = EngineConfig.from_params(**s.engine_config_params())
    assert (config.fit_every, config.horizon) == (250, 6)
    assert Settings().fit_every == EngineConfig().fit_every == 1000
    assert Settings().warmup_events == EngineConfig().warmup_events
    assert Settings().max_streams == EngineConfig().max_streams


@pytest.mark.parametrize("source", ["flag", "env", "toml"])
def test_the_old_name_fine_tune_every_still_works_with_a_warning(tmp_path, caplog, source):
    argv, env = {
        "flag": (["--fine-tune-every", "77"], {}),
        "env": ([], {"STREAMVGAN_FINE_TUNE_EVERY": "77"}),
        "toml": (["--config", _toml(tmp_path, "fine-tune-every = 77\n")], {}),
    }[source]
    with caplog.at_level("WARNING", logger="streamvgan.service.settings"):
        assert _parse(argv, env).fit_every == 77
    assert "'fine_tune_every'" in caplog.text and "--fit-every" in caplog.text
    # the new name wins where both are given
    assert _parse([*argv, "--fit-every", "5"], env).fit_every == 5


def test_engine_strings_are_parsed_here_not_in_the_engine(tmp_path):
    """`--engine-param signals=jump,level` arrives as a string; the settings layer makes it
    the tuple EngineConfig takes (EngineConfig itself rejects the string)."""
    from streamvgan.engine import EngineConfig

    s = _parse(["--engine-param", "signals=jump,level", "--engine-param", "quantiles=0.05,0.95"])
    config = EngineConfig.from_params(**s.engine_config_params())
    assert config.signals == ("jump", "level") and config.quantiles == (0.05, 0.95)
    toml = _toml(tmp_path, '[engine]\nsignals = ["level"]\n')
    assert EngineConfig.from_params(**_parse(["--config", toml]).engine_config_params()).signals \
        == ("level",)
    with pytest.raises(ConfigurationError, match="quantiles='low' is not a comma-separated"):
        _parse(["--engine-param", "quantiles=low"]).engine_config_params()
    with pytest.raises(ConfigurationError, match="EngineConfig.signals"):
        EngineConfig(signals="jump,level")  # type: ignore[arg-type]


def test_plain_construction_reads_no_environment(monkeypatch):
    monkeypatch.setenv("STREAMVGAN_HORIZON", "99")
    assert Settings().horizon == 12  # only resolve() layers the environment and the file
    assert Settings.resolve(env={"STREAMVGAN_HORIZON": "99"}).horizon == 99


def test_booleans_from_env_and_flags():
    assert _parse([], {"STREAMVGAN_CREATE_TOPICS": "false"}).create_topics is False
    assert _parse(["--create-topics"], {"STREAMVGAN_CREATE_TOPICS": "no"}).create_topics is True
    with pytest.raises(ConfigurationError, match="STREAMVGAN_CREATE_TOPICS"):
        _parse([], {"STREAMVGAN_CREATE_TOPICS": "maybe"})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"alert_threshold": 0.0}, "alert_threshold"),
        ({"forecast_every": -1}, "forecast_every"),
        ({"poll_max_records": 0}, "poll_max_records"),
        ({"input_topic": "bad topic!"}, "input_topic"),
        ({"scores_topic": "events"}, "both"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "sasl_username"),
        ({"sasl_mechanism": "PLAIN"}, "SASL_PLAINTEXT"),
        ({"auto_offset_reset": "middle"}, "auto_offset_reset"),
        ({"metrics_port": 70000}, "metrics_port"),
        ({"commit_interval_s": 0}, "commit_interval_s"),
        ({"horizon": True}, "horizon must be a number, not true/false"),
        ({"model_source": "s3"}, "model_source must be 'local' or 'topic', got 's3'"),
        ({"hrizon": 3}, "unknown setting 'hrizon'; known settings: alert_threshold"),
    ],
)
def test_invalid_values_say_what_is_wrong(changes, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings(**changes)


def test_bad_sources_are_clear(tmp_path):
    with pytest.raises(ConfigurationError, match="STREAMVGAN_HORIZON must be a valid integer.*"
                                                 "got 'twelve'"):
        _parse([], {"STREAMVGAN_HORIZON": "twelve"})
    with pytest.raises(ConfigurationError, match="STREAMVGAN_ENGINE_PARAMS is not valid JSON"):
        _parse([], {"STREAMVGAN_ENGINE_PARAMS": "{hidden_size: 8"})
    with pytest.raises(ConfigurationError, match="--poll-max-records must be greater than or "
                                                 "equal to 1, got 0"):
        _parse(["--poll-max-records", "0"])
    with pytest.raises(ConfigurationError, match="is not valid TOML"):
        _parse(["--config", _toml(tmp_path, "horizon = = 3\n")])
    with pytest.raises(ConfigurationError, match="unknown setting 'hrizon'"):
        _parse(["--config", _toml(tmp_path, "hrizon = 3\n")])
    with pytest.raises(ConfigurationError, match="must be of type int"):
        _parse(["--config", _toml(tmp_path, 'horizon = "3"\n')])
    with pytest.raises(ConfigurationError, match="does not exist"):
        _parse(["--config", str(tmp_path / "missing.toml")])


def test_security_pass_through_and_password_hidden():
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="svc", sasl_password="s3cret", ssl_cafile="/ca.pem")
    assert s.kafka_security() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc", "sasl_plain_password": "s3cret", "ssl_cafile": "/ca.pem",
        "ssl_check_hostname": True,
    }
    assert "s3cret" not in repr(s)


def test_help_shows_every_default_and_env_var():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for flag, default, env in [
        ("--bootstrap-servers", "localhost:9092", "STREAMVGAN_BOOTSTRAP_SERVERS"),
        ("--checkpoint-interval-s", "60.0", "STREAMVGAN_CHECKPOINT_INTERVAL_S"),
        ("--continuation-every", "100", "STREAMVGAN_CONTINUATION_EVERY"),
        ("--alert-threshold", "0.99", "STREAMVGAN_ALERT_THRESHOLD"),
    ]:
        assert flag in text and f"Default: {default}" in text and env in text
    assert "--sasl-password" in text and "Default: ***" not in text  # empty default: (none)


def test_readme_table_lists_every_setting_with_its_flag_env_and_default():
    """The README's settings table is the one users read: it must not drift from the code."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name, info in Settings.model_fields.items():
        flag = "--engine-param KEY=VALUE" if name == "engine_params" else "--" + name.replace(
            "_", "-")
        default = "(empty)" if info.default in ("", {}) else info.default
        row = f"| `{flag}` | `STREAMVGAN_{name.upper()}` | `{default}` | {info.description} |"
        assert row in readme, row
