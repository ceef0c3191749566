"""Conformance cases for the ZeroMQ shim (tcp:// and ipc://).

ZeroMQ needs no broker process, so there is nothing for `require_broker` to
check, and no unreachable case: sockets connect lazily and a missing peer
only means nothing is delivered.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from proxystore_stream.shims import zmq as zmq_shim
from tests.conftest import free_port
from tests.shims.cases import ShimCase

READY_TIMEOUT = 10.0


class ZeroMQFactory:
    """Publisher binds; subscribers connect and are awaited via XPUB notices.

    Args:
        endpoint: Returns a fresh endpoint; its argument says whether it is
            for binding (may use a wildcard port) or connecting.
    """

    def __init__(self, endpoint: Callable[[bool], str]) -> None:
        self._endpoint_for = endpoint
        self._endpoint: str | None = None
        self._publisher: Any = None
        self._subscribers: list[tuple[Any, list[str]]] = []
        self._ipc_paths: list[str] = []

    def _bind_endpoint(self) -> str:
        return self._remember(self._endpoint_for(True))

    def _remember(self, endpoint: str) -> str:
        if endpoint.startswith("ipc://"):
            self._ipc_paths.append(endpoint.removeprefix("ipc://"))
        return endpoint

    def _connect_endpoint(self) -> str:
        # A subscriber made before any publisher connects to an endpoint
        # nobody binds yet (ZeroMQ connects lazily).
        if self._endpoint is None:
            self._endpoint = self._remember(self._endpoint_for(False))
        return self._endpoint

    def _expected(self, topic: str) -> int:
        return sum(1 for sub, topics in self._subscribers if topic in topics and not sub._closed)

    def publisher(self) -> Any:
        pub = zmq_shim.ZeroMQPublisher(self._bind_endpoint())
        self._publisher, self._endpoint = pub, pub.endpoint
        return pub

    def subscriber(self, topics: Sequence[str]) -> Any:
        sub = zmq_shim.ZeroMQSubscriber(self._connect_endpoint(), topic=list(topics))
        self._subscribers.append((sub, list(topics)))
        pub = self._publisher
        if pub is not None and not pub._closed:
            for topic in topics:
                pub.wait_for_subscribers(
                    topic,
                    self._expected(topic),
                    timeout=READY_TIMEOUT,
                )
        return sub

    async def async_publisher(self) -> Any:
        pub = zmq_shim.AsyncZeroMQPublisher(self._bind_endpoint())
        self._publisher, self._endpoint = pub, pub.endpoint
        return pub

    async def async_subscriber(self, topics: Sequence[str]) -> Any:
        sub = zmq_shim.AsyncZeroMQSubscriber(
            self._connect_endpoint(),
            topic=list(topics),
        )
        self._subscribers.append((sub, list(topics)))
        pub = self._publisher
        if pub is not None and not pub._closed:
            for topic in topics:
                await pub.wait_for_subscribers(
                    topic,
                    self._expected(topic),
                    timeout=READY_TIMEOUT,
                )
        return sub

    def close(self) -> None:
        for path in self._ipc_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


def tcp_endpoint(bind: bool) -> str:
    return "tcp://127.0.0.1:*" if bind else f"tcp://127.0.0.1:{free_port()}"


def ipc_endpoint(bind: bool) -> str:
    path = os.path.join(tempfile.gettempdir(), f"pss-zmq-{uuid.uuid4().hex[:12]}.sock")
    return f"ipc://{path}"


CASES = [
    ShimCase(
        name="zmq",
        make=lambda: ZeroMQFactory(tcp_endpoint),
        fanout=True,
        persistent=False,
    ),
    ShimCase(
        name="zmq-ipc",
        make=lambda: ZeroMQFactory(ipc_endpoint),
        fanout=True,
        persistent=False,
    ),
]
