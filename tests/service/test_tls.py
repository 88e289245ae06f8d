"""`serve` over real TLS: stunnel (Debian's `stunnel4`, installed by `make system-deps`)
terminates TLS in front of the embedded broker, with a throwaway CA made here by the `openssl`
command. The broker advertises stunnel's address, so every connection after bootstrap goes
through TLS too. A wrong CA must give one clear error at once, not a hang.

Skipped, with the reason, where stunnel or openssl is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamvgan.service import clients
from streamvgan.service.app import Application
from streamvgan.tools.broker import EmbeddedBroker, free_port
from streamvgan.service.settings import Settings

pytestmark = pytest.mark.kafka

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")
OPENSSL = shutil.which("openssl")
WAIT_S = 120  # bound on every wait (a loaded 2-core machine), not a speed check

if STUNNEL is None or OPENSSL is None:
    pytest.skip(
        "needs Debian's stunnel4 and openssl: `sudo make system-deps` installs stunnel4 "
        f"(found stunnel={STUNNEL}, openssl={OPENSSL})", allow_module_level=True,
    )


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert), cwd=directory)
    return cert, key


def _make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, signed by ``ca``."""
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(key), "-out", str(csr), cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert),
             cwd=directory)
    return cert, key


def _wait_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"stunnel exited ({process.returncode}):\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"stunnel did not listen on {port}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """Broker on a plaintext loopback port, stunnel on a TLS port in front of it."""
    tmp = tmp_path_factory.mktemp("tls")
    ca = _make_ca(tmp / "ca", "streamvgan-test-ca")
    wrong_ca = _make_ca(tmp / "wrong", "someone-else-ca")
    cert, key = _make_server_cert(tmp / "ca", ca)
    tls_port = free_port()
    broker = EmbeddedBroker(advertised=f"localhost:{tls_port}").start()
    plain_port = int(broker.bootstrap_servers.rsplit(":", 1)[1])
    conf, log = tmp / "stunnel.conf", tmp / "stunnel.log"
    conf.write_text(
        f"foreground = yes\npid =\noutput = {log}\n\n[kafka]\n"
        f"accept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{plain_port}\n"
        f"cert = {cert}\nkey = {key}\n"
    )
    stunnel = subprocess.Popen([STUNNEL, str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        _wait_port(tls_port, stunnel, log)
        yield {"servers": f"localhost:{tls_port}", "ca": ca[0], "wrong_ca": wrong_ca[0],
               "plain": broker.bootstrap_servers}
    finally:
        stunnel.terminate()
        try:
            stunnel.wait(10)
        except subprocess.TimeoutExpired:
            stunnel.kill()
            stunnel.wait(10)
        broker.stop()


def _settings(tls, cafile: Path, topic: str, **changes) -> Settings:
    return Settings(**{
        "bootstrap_servers": tls["servers"], "input_topic": topic, "group_id": f"{topic}-g",
        "security_protocol": "SSL", "ssl_cafile": str(cafile), "metrics_port": -1,
        "commit_interval_s": 0.5, "forecast_every": 0, "continuation_every": 0,
        "engine_params": {"warmup_events": 10**9}, **changes,
    })


def test_serve_scores_through_tls(tls, kafka_client):
    topic = f"tls-in-{kafka_client}"
    settings = _settings(tls, tls["ca"], topic, partitions=2, kafka_client=kafka_client)
    security = settings.kafka_security()
    assert security["security_protocol"] == "SSL" and security["ssl_check_hostname"] is True
    app = Application(settings, registry=CollectorRegistry()).start()
    try:
        assert app.wait_started(WAIT_S)
        producer = clients.make_producer(tls["servers"], security=security)
        try:
            for i in range(40):
                producer.send(topic, key=f"s{i % 4}".encode(), value=json.dumps(
                    {"stream": f"s{i % 4}", "ts": i, "value": float(i % 5)}).encode())
            producer.flush()
        finally:
            producer.close(timeout=10)
        deadline = time.monotonic() + WAIT_S
        while app.stats.scored < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert app.stats.scored == 40
        # the scores, read back through TLS as well
        consumer = clients.make_consumer(tls["servers"], security=security)
        try:
            from kafka import TopicPartition

            tps = [TopicPartition(settings.scores_topic, p) for p in range(2)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            seen: set[int] = set()
            deadline = time.monotonic() + WAIT_S
            while len(seen) < 40 and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    seen.update(json.loads(r.value)["ts"] for r in records)
        finally:
            consumer.close()
        assert seen == set(range(40))
    finally:
        app.stop()
        assert app.join(60) == 0


def test_wrong_ca_is_one_clear_error(tls, caplog, kafka_client):
    settings = _settings(tls, tls["wrong_ca"], "tls-wrong", kafka_client=kafka_client)
    app = Application(settings, registry=CollectorRegistry())
    with caplog.at_level("ERROR"):
        app.start()
        code = app.join(WAIT_S)  # returns at once; the bound only keeps a regression finite
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert tls["servers"] in errors[0] and str(tls["wrong_ca"]) in errors[0]
    assert "certificate verify failed" in errors[0] or "unable to get local issuer" in errors[0]


def test_plaintext_client_settings_against_tls_port_fail_clearly(tls, caplog):
    """SSL settings pointed at a plaintext port: the handshake error says so."""
    settings = _settings(tls, tls["ca"], "tls-plain", bootstrap_servers=tls["plain"])
    app = Application(settings, registry=CollectorRegistry())
    with caplog.at_level("ERROR"):
        assert app.run() == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "TLS handshake with" in errors[0], errors
