"""The service's one configuration object and where its values come from.

Precedence, highest first: command-line flags, ``STREAMVGAN_*`` environment variables, an
optional TOML file (``--config FILE`` or ``STREAMVGAN_CONFIG``), then the defaults written
below. :class:`Settings` is built once in the CLI, validated, frozen, and handed to the
:class:`~streamvgan.service.app.Application`; library classes below it take plain values.

Every field is one flag (``checkpoint_dir`` -> ``--checkpoint-dir``), one environment
variable (``STREAMVGAN_CHECKPOINT_DIR``) and one TOML key (``checkpoint_dir`` or
``checkpoint-dir``). Engine parameters that have no flag of their own (``hidden_size``,
``fit_steps``...) go in the TOML file's ``[engine]`` table or in ``--engine-param KEY=VALUE``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from streamvgan.errors import ConfigurationError

ENV_PREFIX = "STREAMVGAN_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
OFFSET_RESETS = ("earliest", "latest")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _opt(help: str, default: Any = MISSING, *, secret: bool = False, **extra: Any) -> Any:
    metadata = {"help": help, "secret": secret, **extra}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Configuration of ``streamvgan serve``; validated on construction.

    Output topic names left empty are derived from the input topic
    (``TOPIC.scores``, ``TOPIC.forecasts``, ``TOPIC.continuations``, ``TOPIC.dlq``).

    Examples
    --------
    >>> from streamvgan.service.settings import Settings
    >>> s = Settings(input_topic="metrics")
    >>> s.scores_topic, s.dlq_topic
    ('metrics.scores', 'metrics.dlq')
    >>> Settings(input_topic="metrics", alert_threshold=2.0)
    Traceback (most recent call last):
    ...
    streamvgan.errors.ConfigurationError: alert_threshold must be in (0, 1], got 2.0

    """

    # -- Kafka
    bootstrap_servers: str = _opt("Kafka bootstrap servers, comma separated", "localhost:9092")
    input_topic: str = _opt("topic the JSON events are read from", "events")
    group_id: str = _opt(
        "consumer group id; replicas with the same id share partitions", "streamvgan"
    )
    scores_topic: str = _opt("output topic of anomaly scores (empty: INPUT_TOPIC.scores)", "")
    forecasts_topic: str = _opt("output topic of forecasts (empty: INPUT_TOPIC.forecasts)", "")
    continuations_topic: str = _opt(
        "output topic of sampled continuations (empty: INPUT_TOPIC.continuations)", ""
    )
    dlq_topic: str = _opt(
        "dead-letter topic for records that cannot be processed (empty: INPUT_TOPIC.dlq)", ""
    )
    create_topics: bool = _opt(
        "create missing output topics at start (needs the CreateTopics permission)", True
    )
    auto_offset_reset: str = _opt(
        "where a new group starts reading: earliest or latest", "earliest"
    )
    client_id: str = _opt("Kafka client id, shown in broker logs", "streamvgan")
    session_timeout_ms: int = _opt(
        "consumer group session timeout; the heartbeat interval is a third of it", 6000
    )
    max_poll_interval_ms: int = _opt(
        "longest time between polls before the group evicts this member", 300000
    )
    poll_max_records: int = _opt("most records taken per poll (one batched engine step)", 500)
    poll_timeout_ms: int = _opt("how long one poll waits for records", 200)
    commit_interval_s: float = _opt(
        "seconds between offset commits (always after the outputs are acknowledged)", 5.0
    )
    # -- Kafka security, passed through to kafka-python
    security_protocol: str = _opt("PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", "PLAINTEXT")
    sasl_mechanism: str = _opt(
        "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or GSSAPI (empty: none)", ""
    )
    sasl_username: str = _opt("SASL username", "")
    sasl_password: str = _opt("SASL password (prefer the environment variable)", "", secret=True)
    ssl_cafile: str = _opt("CA bundle to verify the brokers' certificates", "")
    ssl_certfile: str = _opt("client certificate (PEM) for mutual TLS", "")
    ssl_keyfile: str = _opt("client private key (PEM) for mutual TLS", "")
    ssl_password: str = _opt(
        "password of an encrypted ssl_keyfile (prefer the environment variable)", "", secret=True
    )
    ssl_check_hostname: bool = _opt(
        "check that the broker's certificate names the host "
        "connected to (turn off only for certificates issued to "
        "another name)",
        True,
    )
    sasl_oauth_token_file: str = _opt(
        "file holding the OAUTHBEARER token (a JWT), re-read at "
        "every authentication, so a sidecar can rotate it",
        "",
    )
    broker_retry_s: float = _opt(
        "how long start-up keeps retrying an unreachable broker, with "
        "backoff, before giving up (0: forever)",
        0.0,
    )
    partitions: int = _opt(
        "partitions of the input topic if serve has to create it (0: wait "
        "until someone creates it); outputs and changelog follow the input",
        0,
    )
    # -- outputs
    forecast_every: int = _opt(
        "emit a forecast every N events of a stream (at most one per stream per poll); 0 disables",
        1,
    )
    continuation_every: int = _opt(
        "emit sampled continuations every N events of a stream; 0 disables", 100
    )
    continuation_samples: int = _opt("continuations sampled each time", 8)
    alert_threshold: float = _opt(
        "scores at or above count as anomalies (metric and the 'anomaly' flag of score records)",
        0.99,
    )
    # -- engine
    horizon: int = _opt("steps ahead of forecasts and continuations", 12)
    fine_tune_every: int = _opt("events between fine-tunes of the shared model", 1000)
    warmup_events: int = _opt("events seen before the first fit", 400)
    max_streams: int = _opt("streams kept in memory; the least recently seen are evicted", 100000)
    seed: int = _opt("seed of the model and of the sampled continuations", 0)
    device: str = _opt("torch device, e.g. cpu or cuda", "cpu")
    torch_threads: int = _opt(
        "PyTorch intra-op threads for this process; its small networks "
        "run fastest on 1 (0: PyTorch's default)",
        1,
    )
    engine_params: Mapping[str, Any] = _opt(
        "further EngineConfig/ModelConfig parameters (TOML [engine] table or "
        "--engine-param KEY=VALUE)",
        None,
    )
    # -- state and operations
    checkpoint_dir: str = _opt(
        "directory of engine checkpoints (empty: no checkpoints, state is lost on restart)", ""
    )
    checkpoint_interval_s: float = _opt("seconds between checkpoints (and one at shutdown)", 60.0)
    fine_tune_interval_s: float = _opt("seconds between checks whether a fine-tune is due", 1.0)
    fine_tune_pause_s: float = _opt(
        "seconds the trainer rests after each fine-tune, so that "
        "training cannot take all the CPU from scoring "
        "(0: back to back)",
        10.0,
    )
    state_changelog: bool = _opt(
        "write each stream's state to a compacted changelog topic "
        "(GROUP-TOPIC-state-changelog) at every commit and restore it "
        "when a partition is assigned, so state follows its partition",
        True,
    )
    model_source: str = _opt(
        "where the weights come from: 'local' (this process fine-tunes) or "
        "'topic' (load versions published by `streamvgan train` to "
        "GROUP-TOPIC-model; for several replicas)",
        "local",
    )
    metrics_host: str = _opt("address the metrics/health HTTP server binds", "0.0.0.0")
    metrics_port: int = _opt(
        "port of /metrics, /healthz, /readyz (0: any free port, -1: off)", 8000
    )

    def __post_init__(self) -> None:
        if self.model_source not in ("local", "topic"):
            raise ConfigurationError(
                f"model_source must be 'local' or 'topic', got {self.model_source!r}"
            )
        base = self.input_topic
        for name, suffix in (
            ("scores_topic", "scores"),
            ("forecasts_topic", "forecasts"),
            ("continuations_topic", "continuations"),
            ("dlq_topic", "dlq"),
        ):
            if not getattr(self, name):
                object.__setattr__(self, name, f"{base}.{suffix}")
        object.__setattr__(self, "engine_params", dict(self.engine_params or {}))
        self._validate()

    def _validate(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigurationError("bootstrap_servers is empty; give HOST:PORT[,HOST:PORT]")
        topics: dict[str, str] = {}  # topic -> the setting that names it
        for name in (
            "input_topic",
            "scores_topic",
            "forecasts_topic",
            "continuations_topic",
            "dlq_topic",
        ):
            topic = getattr(self, name)
            if not _TOPIC_RE.match(topic):
                raise ConfigurationError(
                    f"{name}={topic!r} is not a valid Kafka topic name (1-249 of "
                    "letters, digits, '.', '_', '-')"
                )
            if topic in topics:
                raise ConfigurationError(
                    f"{name} and {topics[topic]} are both {topic!r}; every topic must differ"
                )
            topics[topic] = name
        if not self.group_id:
            raise ConfigurationError("group_id is empty; give a consumer group name")
        positive = (
            "session_timeout_ms",
            "max_poll_interval_ms",
            "poll_max_records",
            "continuation_samples",
            "horizon",
            "fine_tune_every",
            "warmup_events",
            "max_streams",
        )
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        for name in (
            "forecast_every",
            "continuation_every",
            "poll_timeout_ms",
            "seed",
            "torch_threads",
            "partitions",
        ):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("metrics_port", self.metrics_port, minimum=-1)
        if self.metrics_port > 65535:
            raise ConfigurationError(f"metrics_port must be <= 65535, got {self.metrics_port}")
        for name in ("commit_interval_s", "checkpoint_interval_s", "fine_tune_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"{name} must be a number > 0, got {value!r}")
        if isinstance(self.broker_retry_s, bool) or not (
            isinstance(self.broker_retry_s, int | float) and self.broker_retry_s >= 0
        ):
            raise ConfigurationError(
                f"broker_retry_s must be a number >= 0 (0: forever), got {self.broker_retry_s!r}"
            )
        if isinstance(self.fine_tune_pause_s, bool) or not (
            isinstance(self.fine_tune_pause_s, int | float) and self.fine_tune_pause_s >= 0
        ):
            raise ConfigurationError(
                f"fine_tune_pause_s must be a number >= 0, got {self.fine_tune_pause_s!r}"
            )
        if isinstance(self.alert_threshold, bool) or not (
            isinstance(self.alert_threshold, int | float) and 0.0 < self.alert_threshold <= 1.0
        ):
            raise ConfigurationError(
                f"alert_threshold must be in (0, 1], got {self.alert_threshold!r}"
            )
        if self.auto_offset_reset not in OFFSET_RESETS:
            raise ConfigurationError(
                f"auto_offset_reset must be one of {OFFSET_RESETS}, got {self.auto_offset_reset!r}"
            )
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigurationError(
                f"security_protocol must be one of {SECURITY_PROTOCOLS}, "
                f"got {self.security_protocol!r}"
            )
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigurationError(
                    f"security_protocol={self.security_protocol} needs sasl_mechanism, one of "
                    f"{SASL_MECHANISMS}; got {self.sasl_mechanism!r}"
                )
            if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
                self.sasl_username and self.sasl_password
            ):
                raise ConfigurationError(
                    f"sasl_mechanism={self.sasl_mechanism} needs sasl_username and "
                    "sasl_password (set STREAMVGAN_SASL_PASSWORD rather than a flag)"
                )
            if self.sasl_mechanism == "OAUTHBEARER" and not self.sasl_oauth_token_file:
                raise ConfigurationError(
                    "sasl_mechanism=OAUTHBEARER needs sasl_oauth_token_file, a file holding "
                    "the token (kept fresh by your identity provider's sidecar)"
                )
        elif self.sasl_mechanism:
            raise ConfigurationError(
                f"sasl_mechanism={self.sasl_mechanism!r} is set but security_protocol is "
                f"{self.security_protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        if self.session_timeout_ms < 3:
            raise ConfigurationError("session_timeout_ms must be at least 3")
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ConfigurationError(
                f"max_poll_interval_ms={self.max_poll_interval_ms} must be >= "
                f"session_timeout_ms={self.session_timeout_ms}"
            )

    # -- derived values handed to the library classes

    def kafka_security(self) -> dict[str, Any]:
        """kafka-python keyword arguments for the security settings that are set."""
        config: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            config["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl_plain_username"] = self.sasl_username
        if self.sasl_password:
            config["sasl_plain_password"] = self.sasl_password
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            if getattr(self, name):
                config[name] = getattr(self, name)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            config["ssl_check_hostname"] = self.ssl_check_hostname
        if self.sasl_mechanism == "OAUTHBEARER":
            from streamvgan.service.clients import FileTokenProvider

            config["sasl_oauth_token_provider"] = FileTokenProvider(self.sasl_oauth_token_file)
        return config

    def check_files(self) -> None:
        """Raise :class:`ConfigurationError` naming the first TLS or token file that cannot be
        read (called at start, before any connection: kafka-python would otherwise retry a
        missing CA file for ever)."""
        names = ["sasl_oauth_token_file"]
        if self.security_protocol in ("SSL", "SASL_SSL"):
            names = ["ssl_cafile", "ssl_certfile", "ssl_keyfile", *names]
        for name in names:
            path = getattr(self, name)
            if not path:
                continue
            if not os.path.isfile(path):
                raise ConfigurationError(
                    f"{name}={path!r} does not exist or is not a file; fix the path "
                    f"(--{name.replace('_', '-')} or {ENV_PREFIX}{name.upper()})"
                )
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigurationError(
                    f"{name}={path!r} cannot be read ({exc.strerror}); check its permissions"
                ) from None

    def engine_config_params(self) -> dict[str, Any]:
        """Parameters for ``EngineConfig.from_params``: the named settings, then the extras."""
        params: dict[str, Any] = {
            "horizon": self.horizon,
            "fit_every": self.fine_tune_every,
            "warmup_events": self.warmup_events,
            "max_streams": self.max_streams,
        }
        params.update(self.engine_params)
        return params

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    # -- building from the outside world

    @classmethod
    def resolve(
        cls,
        cli: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> Settings:
        """Merge defaults < TOML file < environment < CLI flags and validate.

        ``cli`` holds only the flags the user gave (field name -> typed value); ``env`` is
        usually ``os.environ``; ``config_file`` defaults to ``$STREAMVGAN_CONFIG``.
        """
        env = {} if env is None else env
        cli = dict(cli or {})
        path = config_file or cli.pop("config", None) or env.get(CONFIG_ENV) or None
        values: dict[str, Any] = {}
        engine_params: dict[str, Any] = {}
        if path:
            file_values, file_engine = _read_toml(Path(path))
            values.update(file_values)
            engine_params.update(file_engine)
        values.update(_from_env(env))
        if ENV_PREFIX + "ENGINE_PARAMS" in env:
            engine_params.update(values.pop("engine_params"))
        cli_engine = cli.pop("engine_params", None)
        if cli_engine:
            engine_params.update(cli_engine)
        values.update({k: v for k, v in cli.items() if k in _FIELDS})
        values["engine_params"] = engine_params
        return cls(**values)


_FIELDS = {f.name: f for f in fields(Settings)}


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _field_type(name: str) -> str:
    return str(_FIELDS[name].type)


def _parse_bool(text: str, source: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{source}={text!r} is not a boolean; use true or false")


def _convert(name: str, text: str, source: str) -> Any:
    """Turn the string ``text`` of setting ``name`` into its declared type."""
    kind = _field_type(name)
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigurationError(f"{source}={text!r} is not a valid {kind}") from None
    if kind == "bool":
        return _parse_bool(text, source)
    if name == "engine_params":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{source} must be a JSON object: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"{source} must be a JSON object, got {text!r}")
        return data
    return text


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = _convert(name, env[key], key)
    return values


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigurationError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    engine = data.pop("engine", {})
    if not isinstance(engine, dict):
        raise ConfigurationError(f"{path}: [engine] must be a table, got {engine!r}")
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _FIELDS or name == "engine_params":
            raise ConfigurationError(
                f"{path}: unknown setting {key!r}; known settings: "
                f"{', '.join(sorted(n for n in _FIELDS if n != 'engine_params'))}, "
                "and an [engine] table"
            )
        kind = _field_type(name)
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, object)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigurationError(
                f"{path}: {key} must be of type {kind}, got {value!r} ({type(value).__name__})"
            )
        values[name] = value
    return values, engine


# -- argparse


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_engine_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """Add one flag per setting (or those in ``only``); the help shows default and env var.

    Flags default to ``argparse.SUPPRESS``, so the namespace holds only what the user typed
    and :func:`settings_from_args` can tell a flag from a default.
    """
    names = list(_FIELDS) if only is None else list(only)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML file of settings (keys as the flags without '--'); env {CONFIG_ENV}",
    )
    for name in names:
        f = _FIELDS[name]
        env = ENV_PREFIX + name.upper()
        default = f.default
        if name == "engine_params":
            parser.add_argument(
                "--engine-param",
                dest="engine_params",
                metavar="KEY=VALUE",
                action="append",
                type=_parse_engine_param,
                default=argparse.SUPPRESS,
                help=f"{f.metadata['help']}; repeatable; env {env} (JSON object)",
            )
            continue
        shown = "(none)" if default == "" else ("***" if f.metadata["secret"] else default)
        help_text = f"{f.metadata['help']}. Default: {shown}. Env: {env}"
        kind = _field_type(name)
        if kind == "bool":
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                _flag(name),
                dest=name,
                default=argparse.SUPPRESS,
                type={"int": int, "float": float}.get(kind, str),
                metavar=name.upper(),
                help=help_text,
            )


def settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build :class:`Settings` from parsed flags (see :func:`add_arguments`) and ``env``."""
    given = {k: v for k, v in vars(args).items() if k in _FIELDS or k == "config"}
    if "engine_params" in given:
        given["engine_params"] = dict(given["engine_params"])
    given.update(overrides)
    return Settings.resolve(given, os.environ if env is None else env)
