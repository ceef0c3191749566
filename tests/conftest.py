"""Shared test configuration: broker reachability policy, and a plain Redis client.

Tests that need a broker call `require_broker(...)`. On a developer's machine
an unreachable broker skips the test with a clear reason; with
PSS_REQUIRE_BROKERS=1 (set by .ci/run) it fails the test instead, so CI can
never pass by skipping.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

REQUIRE_BROKERS = os.environ.get("PSS_REQUIRE_BROKERS", "") not in ("", "0")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
"""The loopback Redis the tests use."""


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_broker(name: str, host: str, port: int) -> None:
    """Skip (or, under PSS_REQUIRE_BROKERS=1, fail) if the broker is down."""
    if port_open(host, port):
        return
    reason = f"{name} is not reachable on {host}:{port}"
    if REQUIRE_BROKERS:
        pytest.fail(f"{reason} and PSS_REQUIRE_BROKERS is set", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def raw() -> Iterator[Any]:
    """A plain redis-py client of the test Redis, to look at what the shims stored."""
    redis = pytest.importorskip("redis")
    require_broker("Redis", REDIS_HOST, REDIS_PORT)
    client = redis.Redis(REDIS_HOST, REDIS_PORT)
    yield client
    client.close()
