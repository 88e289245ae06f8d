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
    ],
)
def test_invalid_values_say_what_is_wrong(changes, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings(**changes)


def test_bad_sources_are_clear(tmp_path):
    with pytest.raises(ConfigurationError, match="STREAMVGAN_HORIZON"):
        _parse([], {"STREAMVGAN_HORIZON": "twelve"})
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
