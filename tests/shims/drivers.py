"""Drive sync and async endpoints through one interface, so tests are written once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from tests.shims.cases import ShimFactory


class SyncDriver:
    """Calls a factory's sync endpoints directly."""

    mode = "sync"

    def __init__(self, factory: ShimFactory) -> None:
        self.factory = factory
        self._opened: list[Any] = []

    def publisher(self) -> Any:
        pub = self.factory.publisher()
        self._opened.append(pub)
        return pub

    def subscriber(self, topics: Sequence[str]) -> Any:
        sub = self.factory.subscriber(list(topics))
        self._opened.append(sub)
        return sub

    def send(self, pub: Any, topic: str, message: bytes) -> None:
        pub.send(topic, message)

    def flush(self, pub: Any) -> None:
        if hasattr(pub, "flush"):
            pub.flush()

    def receive(self, sub: Any, timeout: float | None) -> bytes:
        return sub.receive(timeout)  # type: ignore[no-any-return]

    def ack(self, sub: Any) -> None:
        if hasattr(sub, "ack"):
            sub.ack()

    def iterate(self, sub: Any) -> list[bytes]:
        return list(sub)

    def close(self, endpoint: Any) -> None:
        endpoint.close()

    def shutdown(self) -> None:
        for endpoint in reversed(self._opened):
            with contextlib.suppress(Exception):
                endpoint.close()


class AsyncDriver:
    """Runs a factory's async endpoints on a private event loop."""

    mode = "async"

    def __init__(self, factory: ShimFactory) -> None:
        self.factory = factory
        self.loop = asyncio.new_event_loop()
        self._opened: list[Any] = []

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def publisher(self) -> Any:
        pub = self.run(self.factory.async_publisher())
        self._opened.append(pub)
        return pub

    def subscriber(self, topics: Sequence[str]) -> Any:
        sub = self.run(self.factory.async_subscriber(list(topics)))
        self._opened.append(sub)
        return sub

    def send(self, pub: Any, topic: str, message: bytes) -> None:
        self.run(pub.send(topic, message))

    def flush(self, pub: Any) -> None:
        if hasattr(pub, "flush"):
            self.run(pub.flush())

    def receive(self, sub: Any, timeout: float | None) -> bytes:
        return self.run(sub.receive(timeout))  # type: ignore[no-any-return]

    def ack(self, sub: Any) -> None:
        if hasattr(sub, "ack"):
            self.run(sub.ack())

    def iterate(self, sub: Any) -> list[bytes]:
        async def collect() -> list[bytes]:
            return [message async for message in sub]

        return self.run(collect())  # type: ignore[no-any-return]

    def close(self, endpoint: Any) -> None:
        self.run(endpoint.close())

    def shutdown(self) -> None:
        for endpoint in reversed(self._opened):
            with contextlib.suppress(Exception):
                self.run(endpoint.close())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


Driver = SyncDriver | AsyncDriver
