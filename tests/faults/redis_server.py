"""A private redis-server for fault tests: start, stop, kill and restart it by PID.

The shared Redis on 127.0.0.1:6379 is never touched. `RedisServer` runs
``redis-server`` on a free loopback port with its data directory in a
directory the test owns, append-only file on and fsynced at every write
(``--appendonly yes --appendfsync always``), so a restart (even after
SIGKILL) keeps every write Redis acknowledged. No RDB snapshots.

Readiness is a PING that succeeds (not just an open port: Redis answers
LOADING while it replays the AOF), polled with a bound. It starts in well
under a second here.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import REQUIRE_BROKERS
from tests.conftest import free_port
from tests.conftest import port_open

HOST = "127.0.0.1"
START_SECONDS = 10.0
STOP_SECONDS = 10.0


def server_binary() -> str:
    """Path of redis-server; skips the test (fails under PSS_REQUIRE_BROKERS=1) if missing."""
    found = shutil.which("redis-server")
    if found is None:
        reason = "redis-server is not installed"
        if REQUIRE_BROKERS:
            pytest.fail(f"{reason} and PSS_REQUIRE_BROKERS is set", pytrace=False)
        pytest.skip(reason)
    return found


class RedisServer:
    """One private redis-server on a free loopback port.

    Args:
        directory: Data directory (AOF) owned by the test; kept across restarts.
        port: Port to listen on (default: a free one, kept across restarts).
        options: More ``redis-server`` options, e.g. ``["--requirepass", "pw"]``
            (a later option wins over an earlier one, e.g. ``--port 0``).
        client: Keyword arguments of the readiness check's and `client()`'s
            redis-py client (``password``, ``ssl``, ``ssl_ca_certs``...).
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        options: Sequence[str] = (),
        client: Mapping[str, Any] | None = None,
    ) -> None:
        self.binary = server_binary()
        self.directory = directory
        self.port = free_port() if port is None else port
        self.options = list(options)
        self.client_options = dict(client or {})
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING.

        Raises:
            AssertionError: If it exits or does not answer within 10 s.
        """
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_SECONDS
        client = redis.Redis(
            HOST,
            self.port,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            **self.client_options,
        )
        try:
            while True:
                assert self.process.poll() is None, "redis-server exited at start"
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send `sig` to the server (by PID) and wait until it exited and the port is free."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_SECONDS)
        deadline = time.monotonic() + STOP_SECONDS
        while port_open(HOST, self.port, timeout=0.2):
            assert time.monotonic() < deadline, "the port stayed open"
            time.sleep(0.02)

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server with `sig`, then start it again on the same port and directory."""
        self.stop(sig)
        self.start()

    def client(self) -> redis.Redis:
        """A plain redis-py client of this server (RESP2, for inspection)."""
        return redis.Redis(HOST, self.port, protocol=2, **self.client_options)
