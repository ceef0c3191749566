"""Conformance case for the in-process LocalBroker shim (no broker to require)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxystore_stream.shims.local import AsyncLocalPublisher
from proxystore_stream.shims.local import AsyncLocalSubscriber
from proxystore_stream.shims.local import LocalBroker
from proxystore_stream.shims.local import LocalPublisher
from proxystore_stream.shims.local import LocalSubscriber
from tests.shims.cases import ShimCase
from tests.shims.cases import close_quietly

# The suite sends up to 3000 messages from the receiving thread before
# receiving any; with the default maxsize (1024, block policy) that send would
# wait forever for room, so the conformance subscribers get a larger buffer.
MAXSIZE = 10_000


class LocalFactory:
    """One LocalBroker per test, shared by every endpoint the test makes."""

    def __init__(self) -> None:
        self.broker = LocalBroker()
        self.made: list[Any] = []

    def publisher(self) -> LocalPublisher:
        pub = LocalPublisher(self.broker)
        self.made.append(pub)
        return pub

    def subscriber(self, topics: Sequence[str]) -> LocalSubscriber:
        sub = LocalSubscriber(self.broker, list(topics), maxsize=MAXSIZE)
        self.made.append(sub)
        return sub

    async def async_publisher(self) -> AsyncLocalPublisher:
        return AsyncLocalPublisher(self.broker)

    async def async_subscriber(self, topics: Sequence[str]) -> AsyncLocalSubscriber:
        return AsyncLocalSubscriber(self.broker, list(topics), maxsize=MAXSIZE)

    def close(self) -> None:
        # The async endpoints are closed by the driver on its loop.
        close_quietly(*self.made)


CASES = [
    ShimCase(
        name="local",
        make=LocalFactory,
        fanout=True,
        persistent=False,
        multi_topic=True,
    ),
]
