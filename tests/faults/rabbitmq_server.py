"""A private RabbitMQ node for fault tests: start, kill and restart it by PID.

The shared broker on 127.0.0.1:5672 is never touched. `RabbitMQNode` runs
``rabbitmq-server`` with its own node name, AMQP port, distribution port,
data, log and config directories, all under a directory the test owns, and
with no plugins. The server script runs in a new session, so the node and its
helper processes (beam, erl_child_setup, inet_gethost, the disk monitor) form
one process group that `kill()` ends with SIGKILL by that group's id.

What the node needs, found by trying:

- the real script, not the distribution's wrapper: Debian's
  ``/usr/sbin/rabbitmq-server`` switches to the ``rabbitmq`` user when run as
  root, which cannot write our directories; ``/usr/lib/rabbitmq/bin`` holds
  the script itself (``PSS_RABBITMQ_SERVER`` overrides the path);
- ``RABBITMQ_CONF_ENV_FILE`` and ``RABBITMQ_CONFIG_FILE`` of our own: the
  system's ``rabbitmq-env.conf`` sets the shared node's name and its
  ``rabbitmq.conf`` a listener on 5672, which would clash;
- ``HOME`` in our directory: the Erlang cookie is created there;
- the distribution listener bound to loopback (``inet_dist_use_interface``);
- ports below the kernel's ephemeral range: clients that reconnect while
  the node is down make many outgoing connections to its port, and one of
  them can be given that very port as its own source port (a TCP
  self-connect), after which the restarted node fails with ``eaddrinuse``.
  That happened here with a port from ``free_port()``.

A node starts in about 6 to 8 s on this machine and restarts (same data
directory, after SIGKILL) in about 6 s. Readiness is an AMQP handshake that
succeeds, polled with a bound.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pika
import pytest

from tests.conftest import REQUIRE_BROKERS
from tests.conftest import free_port
from tests.conftest import port_open

HOST = "127.0.0.1"
_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def quiet_port() -> int:
    """Return a free loopback port below the ephemeral range (see the module docstring)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, max(low, 10_001))
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    return free_port()


def server_script() -> str | None:
    """Path of the rabbitmq-server script to run, or None if there is none."""
    override = os.environ.get("PSS_RABBITMQ_SERVER")
    if override:
        return override
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("rabbitmq-server")


class RabbitMQNode:
    """One private RabbitMQ node on free loopback ports.

    Args:
        base: Directory for the node's data, logs and config (the test's).
    """

    def __init__(self, base: Path) -> None:
        script = server_script()
        if script is None:
            reason = "rabbitmq-server is not installed"
            if REQUIRE_BROKERS:
                pytest.fail(f"{reason} and PSS_REQUIRE_BROKERS is set", pytrace=False)
            pytest.skip(reason)
        self.script = script
        self.base = base
        self.port = quiet_port()
        self.dist_port = quiet_port()
        self.name = f"pss{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {HOST}:{self.port}\n",
        )
        self.env = {
            key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")
        }
        self.env.update(
            HOME=str(base),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(base / "plugins-expand"),
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=str(base / "rabbitmq.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS=HOST,
        )

    @property
    def url(self) -> str:
        """AMQP URL of the node (guest/guest, default vhost)."""
        return f"amqp://guest:guest@{HOST}:{self.port}/%2F"

    def start(self, timeout: float = 60.0) -> float:
        """Start the node and wait until it accepts AMQP connections.

        Returns:
            Seconds the start took.

        Raises:
            RuntimeError: If the node exits or is not ready within `timeout`.
        """
        assert self.process is None or self.process.poll() is not None, "already running"
        start = time.monotonic()
        log = (self.base / "server.out").open("ab")
        try:
            self.process = subprocess.Popen(
                [self.script],
                env=self.env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = start + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited early:\n{self._log_tail()}")
            if self.ready():
                return time.monotonic() - start
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"rabbitmq-server not ready after {timeout} s:\n{self._log_tail()}")

    def ready(self) -> bool:
        """Whether an AMQP connection to the node succeeds right now."""
        if not port_open(HOST, self.port, timeout=0.5):
            return False  # quietly: pika logs every refused connect as an error
        params = pika.ConnectionParameters(
            HOST,
            self.port,
            socket_timeout=1.0,
            stack_timeout=2.0,
            connection_attempts=1,
        )
        try:
            connection = pika.BlockingConnection(params)
        except Exception:
            return False
        with contextlib.suppress(Exception):
            connection.close()
        return True

    def kill(self) -> None:
        """SIGKILL the node's process group (ours) and reap the script.

        Idempotent. Sockets close at once, as after a crash: clients see
        their connection reset, not a graceful Connection.Close.
        """
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        # The group leader is gone; wait (bounded) for its children too, so
        # the port is free before a restart.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._group_alive(process.pid):
            time.sleep(0.05)

    def close_connections(self, reason: str = "fault test") -> None:
        """Make the node close every client connection (320 CONNECTION_FORCED).

        Uses ``rabbitmqctl`` next to the server script, with our HOME so it
        finds the node's Erlang cookie. Takes about a second.
        """
        ctl = str(Path(self.script).with_name("rabbitmqctl"))
        subprocess.run(
            [ctl, "-n", self.name, "close_all_connections", reason],
            env=self.env,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=30,
        )

    def restart(self, timeout: float = 60.0) -> float:
        """Kill the node and start it again on the same ports and data.

        Returns:
            Seconds the start took.
        """
        self.kill()
        return self.start(timeout)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - not ours any more
            return False
        return True

    def _log_tail(self, lines: int = 30) -> str:
        text = ""
        with contextlib.suppress(OSError):
            text = (self.base / "server.out").read_text(errors="replace")
        for log in sorted((self.base / "log").glob("*.log")):
            with contextlib.suppress(OSError):
                text += log.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
