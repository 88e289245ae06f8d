"""Security settings that reach kafka-python and fail early: the OAUTHBEARER token file, the
key password, hostname checking, and TLS/token files checked at start with the path named."""

from __future__ import annotations

import pytest
from kafka.net.sasl.oauth import AbstractTokenProvider

from streamvgan.errors import ConfigurationError
from streamvgan.service.clients import FileTokenProvider
from streamvgan.service.settings import Settings


def test_oauthbearer_reads_the_token_file_at_every_authentication(tmp_path):
    token = tmp_path / "token"
    token.write_text("first.jwt.sig\n")
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                 sasl_oauth_token_file=str(token))
    provider = s.kafka_security()["sasl_oauth_token_provider"]
    assert isinstance(provider, FileTokenProvider)
    assert isinstance(provider, AbstractTokenProvider)  # what kafka-python requires
    assert provider.token() == "first.jwt.sig"
    token.write_text("rotated.jwt.sig")  # a sidecar refreshed it
    assert provider.token() == "rotated.jwt.sig"
    assert "jwt" not in repr(provider)
    token.write_text("  \n")
    with pytest.raises(ConfigurationError, match="is empty"):
        provider.token()
    token.unlink()
    with pytest.raises(ConfigurationError, match=str(token)):
        provider.token()


def test_oauthbearer_without_a_token_file_is_refused():
    with pytest.raises(ConfigurationError, match="sasl_oauth_token_file"):
        Settings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")


def test_key_password_and_hostname_check_reach_kafka_python():
    s = Settings(security_protocol="SSL", ssl_certfile="/c.pem", ssl_keyfile="/k.pem",
                 ssl_password="pw", ssl_check_hostname=False)
    security = s.kafka_security()
    assert security["ssl_password"] == "pw" and security["ssl_check_hostname"] is False
    assert "pw" not in repr(s)
    assert "ssl_check_hostname" not in Settings().kafka_security()  # plaintext: not passed


def test_missing_files_are_named(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    Settings(security_protocol="SSL", ssl_cafile=str(ca)).check_files()
    missing = tmp_path / "nope" / "client.key"
    s = Settings(security_protocol="SSL", ssl_cafile=str(ca), ssl_keyfile=str(missing))
    with pytest.raises(ConfigurationError, match=f"ssl_keyfile='{missing}' does not exist"):
        s.check_files()
    with pytest.raises(ConfigurationError, match="sasl_oauth_token_file"):
        Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER",
                 sasl_oauth_token_file=str(missing)).check_files()
    # TLS files are not used, so not checked, under PLAINTEXT
    Settings(ssl_cafile=str(missing)).check_files()


def test_metrics_host_from_env_and_toml(tmp_path):
    assert Settings.resolve(env={"STREAMVGAN_METRICS_HOST": "127.0.0.1"}).metrics_host \
        == "127.0.0.1"
    config = tmp_path / "s.toml"
    config.write_text('metrics-host = "::1"\n')
    assert Settings.resolve(config_file=config).metrics_host == "::1"


def test_deploy_files_set_the_metrics_bind_address_explicitly():
    """Containers must bind all interfaces (probes and Prometheus come from outside); the
    setting is written out in every deployment file rather than left to the default."""
    import re
    from pathlib import Path

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    for name, pattern in [
        ("Dockerfile", r"STREAMVGAN_METRICS_HOST=(\S+)"),
        ("docker-compose.yml", r"STREAMVGAN_METRICS_HOST: \"?([^\"\s]+)"),
        ("k8s/configmap.yaml", r"STREAMVGAN_METRICS_HOST: \"?([^\"\s]+)"),
    ]:
        found = re.findall(pattern, (deploy / name).read_text())
        assert found == ["0.0.0.0"], (name, found)
