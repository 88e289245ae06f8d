"""The service's one configuration object and where its values come from.

Precedence, highest first: command-line flags, ``STREAMVGAN_*`` environment variables, an
optional TOML file (``--config FILE`` or ``STREAMVGAN_CONFIG``), then the defaults written
below. :class:`Settings` is a pydantic-settings model: built once in the CLI by
:meth:`Settings.resolve`, validated, frozen, and handed to the
:class:`~streamvgan.service.app.Application`; library classes below it take plain values.

Every field is one flag (``checkpoint_dir`` -> ``--checkpoint-dir``), one environment
variable (``STREAMVGAN_CHECKPOINT_DIR``) and one TOML key (``checkpoint_dir`` or
``checkpoint-dir``). Engine parameters that have no flag of their own (``hidden_size``,
``fit_steps``...) go in the TOML file's ``[engine]`` table or in ``--engine-param KEY=VALUE``;
their names are :class:`~streamvgan.engine.EngineConfig`'s. Old names that still work, with a
warning: :data:`DEPRECATED` here and :data:`streamvgan.engine.config.RENAMED` for the engine.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from streamvgan.errors import ConfigurationError

log = logging.getLogger(__name__)

ENV_PREFIX = "STREAMVGAN_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
OFFSET_RESETS = ("earliest", "latest")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_TOPICS = ("input_topic", "scores_topic", "forecasts_topic", "continuations_topic", "dlq_topic")
#: old setting name -> current name (flag, environment variable and TOML key alike); the old
#: one still works, with a warning. ``fine_tune_every`` took the engine's name, ``fit_every``.
DEPRECATED = {"fine_tune_every": "fit_every"}
#: engine parameters that are tuples: the command line and the environment may give them as
#: comma-separated strings (``--engine-param signals=jump,level``)
_TUPLE_PARAMS = {"signals": str, "quantiles": float}


def _opt(help: str, default: Any = ..., *, secret: bool = False, **constraints: Any) -> Any:
    """A field with its help text; a secret never shows in repr() or --help."""
    return Field(
        default,
        description=help,
        repr=not secret,
        json_schema_extra={"secret": secret},
        **constraints,
    )


class _Sources:
    """Where :meth:`Settings.resolve` reads from; unset for a plain ``Settings(...)``, which
    takes only its arguments and the defaults."""

    def __init__(self, environ: Mapping[str, str], config_file: Path | None, given: set[str]):
        self.environ = environ
        self.config_file = config_file
        self.given = given  # the settings passed as arguments (flags)


_SOURCES: contextvars.ContextVar[_Sources | None] = contextvars.ContextVar(
    "streamvgan_settings_sources", default=None
)


class Settings(BaseSettings):
    """Configuration of ``streamvgan serve``; validated on construction.

    Output topic names left empty are derived from the input topic
    (``TOPIC.scores``, ``TOPIC.forecasts``, ``TOPIC.continuations``, ``TOPIC.dlq``).
    ``Settings(...)`` takes its arguments and the defaults; :meth:`resolve` adds the
    environment and the TOML file.

    Examples
    --------
    >>> from streamvgan.service.settings import Settings
    >>> s = Settings(input_topic="metrics")
    >>> s.scores_topic, s.dlq_topic
    ('metrics.scores', 'metrics.dlq')
    >>> Settings(input_topic="metrics", alert_threshold=2.0)
    Traceback (most recent call last):
    ...
    streamvgan.errors.ConfigurationError: alert_threshold must be less than or equal to 1, got 2.0

    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_default=True
    )

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
    auto_offset_reset: Literal["earliest", "latest"] = _opt(
        "where a new group starts reading: earliest or latest", "earliest"
    )
    client_id: str = _opt("Kafka client id, shown in broker logs", "streamvgan")
    kafka_client: Literal["kafka-python", "confluent-kafka"] = _opt(
        "Kafka client library: kafka-python (pure Python) or confluent-kafka (librdkafka, "
        "several times the throughput; pip install 'streamvgan[confluent]')",
        "kafka-python",
    )
    session_timeout_ms: int = _opt(
        "consumer group session timeout; the heartbeat interval is a third of it", 6000, ge=3
    )
    max_poll_interval_ms: int = _opt(
        "longest time between polls before the group evicts this member", 300000, ge=1
    )
    poll_max_records: int = _opt("most records taken per poll (one batched engine step)", 500, ge=1)
    poll_timeout_ms: int = _opt("how long one poll waits for records", 200, ge=0)
    fetch_max_wait_ms: int = _opt(
        "longest the broker holds a fetch while no records are ready: a bound on the latency a "
        "quiet input adds, against more empty fetches",
        100,
        ge=0,
    )
    commit_interval_s: float = _opt(
        "seconds between offset commits (always after the outputs are acknowledged)", 5.0, gt=0
    )
    # -- Kafka security, passed through to kafka-python
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = _opt(
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", "PLAINTEXT"
    )
    sasl_mechanism: Literal[
        "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"
    ] = _opt("PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or GSSAPI (empty: none)", "")
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
        ge=0,
    )
    partitions: int = _opt(
        "partitions of the input topic if serve has to create it (0: wait "
        "until someone creates it); outputs and changelog follow the input",
        0,
        ge=0,
    )
    # -- outputs
    forecast_every: int = _opt(
        "emit a forecast every N events of a stream (at most one per stream per poll; at a "
        "phase set by the stream id, as continuations); 0 disables",
        1,
        ge=0,
    )
    continuation_every: int = _opt(
        "emit sampled continuations every N events of a stream (at a phase set by the stream "
        "id, so streams that start together come due spread over N events); 0 disables",
        100,
        ge=0,
    )
    continuation_samples: int = _opt("continuations sampled each time", 8, ge=1)
    alert_threshold: float = _opt(
        "scores at or above are alerts: the 'anomaly' flag of score records and the anomalies "
        "metric (the engine's cooldown starts at its own cooldown_threshold, 0.9994)",
        0.99,
        gt=0,
        le=1,
    )
    # -- engine
    horizon: int = _opt("steps ahead of forecasts and continuations", 12, ge=1)
    fit_every: int = _opt(
        "events (of all streams together) between fine-tunes of the shared model", 1000, ge=1
    )
    warmup_events: int = _opt("events seen before the first fit", 400, ge=1)
    max_streams: int = _opt(
        "streams kept in memory; the least recently seen are evicted", 100000, ge=1
    )
    seed: int = _opt("seed of the model and of the sampled continuations", 0, ge=0)
    device: str = _opt("torch device, e.g. cpu or cuda", "cpu")
    torch_threads: int = _opt(
        "PyTorch intra-op threads for this process; its small networks "
        "run fastest on 1 (0: PyTorch's default)",
        1,
        ge=0,
    )
    engine_params: dict[str, Any] = _opt(
        "further EngineConfig/ModelConfig parameters (TOML [engine] table or "
        "--engine-param KEY=VALUE)",
        {},
    )
    # -- state and operations
    checkpoint_dir: str = _opt(
        "directory of engine checkpoints (empty: no checkpoints, state is lost on restart)", ""
    )
    checkpoint_interval_s: float = _opt(
        "seconds between checkpoints (and one at shutdown)", 60.0, gt=0
    )
    fine_tune_interval_s: float = _opt(
        "seconds between checks whether a fine-tune is due", 1.0, gt=0
    )
    fine_tune_pause_s: float = _opt(
        "seconds the trainer rests after each fine-tune, so that "
        "training cannot take all the CPU from scoring "
        "(0: back to back)",
        10.0,
        ge=0,
    )
    fine_tune_share: float = _opt(
        "largest share of the trainer's wall time spent in optimiser steps while a "
        "fine-tune runs: each step is followed by a rest in proportion, so training is "
        "spread out instead of a burst that stalls scoring (1: back to back)",
        0.25,
        gt=0,
        le=1,
    )
    state_changelog: bool = _opt(
        "write each stream's state to a compacted changelog topic "
        "(GROUP-TOPIC-state-changelog) at every commit and restore it "
        "when a partition is assigned, so state follows its partition",
        True,
    )
    model_source: Literal["local", "topic"] = _opt(
        "where the weights come from: 'local' (this process fine-tunes) or "
        "'topic' (load versions published by `streamvgan train` to "
        "GROUP-TOPIC-model; for several replicas)",
        "local",
    )
    metrics_host: str = _opt("address the metrics/health HTTP server binds", "0.0.0.0")
    metrics_port: int = _opt(
        "port of /metrics, /healthz, /readyz (0: any free port, -1: off)", 8000, ge=-1, le=65535
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_explain(exc, values)) from None
        except SettingsError:  # the one value an environment source decodes: a JSON object
            raise ConfigurationError(
                f"{ENV_PREFIX}ENGINE_PARAMS is not valid JSON; give a JSON object, e.g. "
                "'{\"hidden_size\": 64}'"
            ) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = _SOURCES.get()
        if sources is None:
            return (init_settings,)
        chain: list[PydanticBaseSettingsSource] = [
            init_settings,
            _EnvSource(settings_cls, sources.environ),
        ]
        if sources.config_file is not None:
            chain.append(_TomlSource(settings_cls, sources.config_file))
        return tuple(chain)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: Any) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation in (int, float):
            raise ValueError("must be a number, not true/false")
        return value

    @field_validator(*_TOPICS)
    @classmethod
    def _topic_name(cls, value: str, info: Any) -> str:
        if value and not _TOPIC_RE.match(value):
            raise ValueError(
                "is not a valid Kafka topic name (1-249 of letters, digits, '.', '_', '-')"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _old_names_and_derived_topics(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in DEPRECATED.items():
            if old in data:
                value = data.pop(old)
                log.warning(
                    "the setting %r (--%s, %s%s) is deprecated; use %r (--%s, %s%s)",
                    old,
                    _dashed(old),
                    ENV_PREFIX,
                    old.upper(),
                    new,
                    _dashed(new),
                    ENV_PREFIX,
                    new.upper(),
                )
                data.setdefault(new, value)  # the new name wins where both are given
        base = data.get("input_topic", cls.model_fields["input_topic"].default)
        for name in _TOPICS[1:]:  # from a valid input topic only: one error, not five
            if not data.get(name) and isinstance(base, str) and _TOPIC_RE.match(base):
                data[name] = f"{base}.{name.removesuffix('_topic')}"
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers is empty; give HOST:PORT[,HOST:PORT]")
        if not self.group_id:
            raise ValueError("group_id is empty; give a consumer group name")
        topics: dict[str, str] = {}  # topic -> the setting that names it
        for name in _TOPICS:
            topic = getattr(self, name)
            if topic in topics:
                raise ValueError(
                    f"{name} and {topics[topic]} are both {topic!r}; every topic must differ"
                )
            topics[topic] = name
        if self.security_protocol.startswith("SASL"):
            if not self.sasl_mechanism:
                raise ValueError(
                    f"security_protocol={self.security_protocol} needs sasl_mechanism, one of "
                    f"{SASL_MECHANISMS}; got {self.sasl_mechanism!r}"
                )
            if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
                self.sasl_username and self.sasl_password
            ):
                raise ValueError(
                    f"sasl_mechanism={self.sasl_mechanism} needs sasl_username and "
                    "sasl_password (set STREAMVGAN_SASL_PASSWORD rather than a flag)"
                )
            if self.sasl_mechanism == "OAUTHBEARER" and not self.sasl_oauth_token_file:
                raise ValueError(
                    "sasl_mechanism=OAUTHBEARER needs sasl_oauth_token_file, a file holding "
                    "the token (kept fresh by your identity provider's sidecar)"
                )
        elif self.sasl_mechanism:
            raise ValueError(
                f"sasl_mechanism={self.sasl_mechanism!r} is set but security_protocol is "
                f"{self.security_protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError(
                f"max_poll_interval_ms={self.max_poll_interval_ms} must be >= "
                f"session_timeout_ms={self.session_timeout_ms}"
            )
        return self

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
                    f"(--{_dashed(name)} or {ENV_PREFIX}{name.upper()})"
                )
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigurationError(
                    f"{name}={path!r} cannot be read ({exc.strerror}); check its permissions"
                ) from None

    def engine_config_params(self) -> dict[str, Any]:
        """Parameters for ``EngineConfig.from_params``: the named settings, then the extras,
        with the command line's comma-separated strings for tuples parsed
        (``signals=jump,level`` -> ``("jump", "level")``)."""
        params: dict[str, Any] = {
            "horizon": self.horizon,
            "fit_every": self.fit_every,
            "warmup_events": self.warmup_events,
            "max_streams": self.max_streams,
        }
        params.update(self.engine_params)
        for name, kind in _TUPLE_PARAMS.items():
            text = params.get(name)
            if isinstance(text, str):
                try:
                    params[name] = tuple(kind(p.strip()) for p in text.split(",") if p.strip())
                except ValueError:
                    raise ConfigurationError(
                        f"engine parameter {name}={text!r} is not a comma-separated list of "
                        f"{kind.__name__}s, e.g. {'jump,level' if kind is str else '0.1,0.9'}"
                    ) from None
        return params

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
        ``engine_params`` are merged key by key across the sources.
        """
        env = {} if env is None else env
        cli = dict(cli or {})
        path = config_file or cli.pop("config", None) or env.get(CONFIG_ENV) or None
        sources = _Sources(env, Path(path) if path else None, set(cli))
        token = _SOURCES.set(sources)
        try:  # pydantic-settings merges the sources, engine_params key by key
            return cls(**cli)
        finally:
            _SOURCES.reset(token)


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _plain_type(name: str) -> type | None:
    """int, float, bool or str for a setting of that type; None for the others."""
    plain: dict[object, type] = {int: int, float: float, bool: bool, str: str}
    return plain.get(Settings.model_fields[name].annotation)


class _EnvSource(EnvSettingsSource):
    """``STREAMVGAN_*`` variables of the given mapping (not necessarily ``os.environ``), the
    deprecated names (:data:`DEPRECATED`) included."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._environ.items()}  # case-insensitive

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for old in DEPRECATED:
            key = ENV_PREFIX + old.upper()
            if key in self._environ:
                values[old] = self._environ[key]
        return values


class _TomlSource(TomlConfigSettingsSource):
    """The TOML file: keys as the flags without ``--`` (``-`` or ``_``), an ``[engine]``
    table for the engine parameters, and values of exactly the setting's type (``"3"`` is
    not taken for 3, as the environment's strings are)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        if not path.is_file():
            raise ConfigurationError(
                f"config file {str(path)!r} does not exist; fix --config or {CONFIG_ENV}"
            )
        self._path = path
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(
                f"config file {str(self._path)!r} is not valid TOML: {exc}"
            ) from None
        engine = data.pop("engine", {})
        if not isinstance(engine, dict):
            raise ConfigurationError(f"{self._path}: [engine] must be a table, got {engine!r}")
        known = sorted(n for n in Settings.model_fields if n != "engine_params")
        values: dict[str, Any] = {"engine_params": engine}
        for key, value in data.items():
            name = key.replace("-", "_")
            target = DEPRECATED.get(name, name)
            if target not in known:
                raise ConfigurationError(
                    f"{self._path}: unknown setting {key!r}; known settings: "
                    f"{', '.join(known)}, and an [engine] table"
                )
            kind = _plain_type(target)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if kind is not None and (
                not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
            ):
                raise ConfigurationError(
                    f"{self._path}: {key} must be of type {kind.__name__}, got {value!r} "
                    f"({type(value).__name__})"
                )
            values[name] = value
        return values


def _origin(name: str, values: Mapping[str, Any]) -> str:
    """Where the value of setting ``name`` came from, as the user wrote it."""
    sources = _SOURCES.get()
    if sources is None or name in values:
        return name if sources is None or name not in sources.given else "--" + _dashed(name)
    key = ENV_PREFIX + name.upper()
    if key in sources.environ:
        return key
    if sources.config_file is not None:
        return f"{sources.config_file}: {name}"
    return name


def _explain(exc: ValidationError, values: Mapping[str, Any]) -> str:
    """One sentence per problem: which setting (flag, variable or file), what it must be, and
    the value given."""
    known = sorted(n for n in Settings.model_fields if n != "engine_params")
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule across several settings: its message says it all
            problems.append(message)
            continue
        name = str(error["loc"][0])
        where = _origin(name, values)
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown setting {name!r}; known settings: {', '.join(known)}")
            continue
        message = message.removeprefix("Input should be ").removeprefix("Value should be ")
        if not message.startswith(("must", "is ")):
            message = "must be " + message
        problems.append(f"{where} {message}, got {error['input']!r}")
    return "; ".join(problems)


# -- argparse


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
    fields = Settings.model_fields
    names = list(fields) if only is None else list(only)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML file of settings (keys as the flags without '--'); env {CONFIG_ENV}",
    )
    for name in names:
        info = fields[name]
        env = ENV_PREFIX + name.upper()
        if name == "engine_params":
            parser.add_argument(
                "--engine-param",
                dest="engine_params",
                metavar="KEY=VALUE",
                action="append",
                type=_parse_engine_param,
                default=argparse.SUPPRESS,
                help=f"{info.description}; repeatable; env {env} (JSON object)",
            )
            continue
        secret = (info.json_schema_extra or {}).get("secret")  # type: ignore[union-attr]
        shown = "(none)" if info.default == "" else ("***" if secret else info.default)
        help_text = f"{info.description}. Default: {shown}. Env: {env}"
        kind = _plain_type(name)
        if kind is bool:
            parser.add_argument(
                "--" + _dashed(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                "--" + _dashed(name),
                dest=name,
                default=argparse.SUPPRESS,
                type=kind if kind is int or kind is float else str,
                metavar=name.upper(),
                help=help_text,
            )
    for old, new in DEPRECATED.items():  # still accepted, not advertised
        if new in names:
            parser.add_argument(
                "--" + _dashed(old),
                dest=old,
                default=argparse.SUPPRESS,
                type=_plain_type(new) or str,
                help=argparse.SUPPRESS,
            )


def settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build :class:`Settings` from parsed flags (see :func:`add_arguments`) and ``env``."""
    known = set(Settings.model_fields) | set(DEPRECATED) | {"config"}
    given = {k: v for k, v in vars(args).items() if k in known}
    if "engine_params" in given:
        given["engine_params"] = dict(given["engine_params"])
    given.update(overrides)
    return Settings.resolve(given, os.environ if env is None else env)
