"""Conformance cases for the Redis shims: pub/sub, list queue and Streams."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import pytest

from tests.conftest import free_port
from tests.conftest import require_broker
from tests.shims.cases import ShimCase
from tests.shims.cases import close_quietly

HOST = "127.0.0.1"
PORT = 6379

try:
    import redis
except ImportError:  # pragma: no cover - the redis extra is missing
    redis = None  # type: ignore[assignment]


def _module(mode: str) -> Any:
    if redis is None:
        pytest.skip("redis-py is not installed")
    import importlib

    return importlib.import_module(f"proxystore_stream.shims.redis.{mode}")


class RedisFactory:
    """Builds one mode's endpoints; deletes the keys its topics made."""

    def __init__(self, mode: str, **subscriber_kwargs: Any) -> None:
        require_broker("Redis", HOST, PORT)
        self.mode = mode
        self.extra = subscriber_kwargs
        self.shim = _module(mode)
        self.group = f"pss-test-group-{uuid.uuid4().hex[:8]}"
        self.topics: set[str] = set()

    def _names(self) -> tuple[str, str, str]:
        prefix = {"pubsub": "Redis", "queue": "RedisQueue", "streams": "RedisStream"}
        name = prefix[self.mode]
        return name, f"{name}Publisher", f"{name}Subscriber"

    def _subscriber_kwargs(self) -> dict[str, Any]:
        made = {"group": self.group} if self.mode == "streams" else {}
        return {**made, **self.extra}

    def publisher(self) -> Any:
        _, pub, _ = self._names()
        return getattr(self.shim, pub)(HOST, PORT)

    def subscriber(self, topics: Sequence[str]) -> Any:
        _, _, sub = self._names()
        self.topics.update(topics)
        return getattr(self.shim, sub)(HOST, PORT, list(topics), **self._subscriber_kwargs())

    async def async_publisher(self) -> Any:
        _, pub, _ = self._names()
        return getattr(self.shim, f"Async{pub}")(HOST, PORT)

    async def async_subscriber(self, topics: Sequence[str]) -> Any:
        _, _, sub = self._names()
        self.topics.update(topics)
        made = getattr(self.shim, f"Async{sub}")(
            HOST,
            PORT,
            list(topics),
            **self._subscriber_kwargs(),
        )
        await made.open()
        return made

    def close(self) -> None:
        if self.mode == "pubsub" or not self.topics:
            return
        client = redis.Redis(HOST, PORT)
        try:
            # Tests also send to names that extend a subscribed topic
            # ("<topic>-longer"); those lists and streams are ours too.
            keys = set(self.topics)
            for topic in self.topics:
                keys.update(client.scan_iter(match=f"{topic}*", count=1000))
            client.delete(*keys)
        finally:
            client.close()


def _unreachable(mode: str, endpoint: str) -> Callable[[], Any]:
    def attempt() -> Any:
        shim = _module(mode)
        from proxystore_stream.retry import RetryPolicy

        port = free_port()
        name = {"pubsub": "Redis", "queue": "RedisQueue", "streams": "RedisStream"}[mode]
        # A short deadline: the default policy retries for 30 s.
        retry = RetryPolicy(deadline=1.0)
        if endpoint == "publisher":
            pub = getattr(shim, f"{name}Publisher")(HOST, port, retry=retry)
            try:
                pub.send("pss-unreachable", b"x")
            finally:
                close_quietly(pub)
            return None
        extra: dict[str, Any] = {"retry": retry}
        if mode == "streams":
            extra["group"] = "g"
        sub = getattr(shim, f"{name}Subscriber")(HOST, port, "pss-unreachable", **extra)
        try:
            sub.receive(1.0)
        finally:
            close_quietly(sub)
        return None

    return attempt


CASES = [
    ShimCase(
        name="redis",
        make=lambda: RedisFactory("pubsub"),
        fanout=True,
        persistent=False,
        unreachable_publisher=_unreachable("pubsub", "publisher"),
        unreachable_subscriber=_unreachable("pubsub", "subscriber"),
    ),
    ShimCase(
        name="redis-queue",
        make=lambda: RedisFactory("queue"),
        fanout=False,
        persistent=True,
        unreachable_publisher=_unreachable("queue", "publisher"),
        unreachable_subscriber=_unreachable("queue", "subscriber"),
    ),
    ShimCase(
        name="redis-queue-prefetch",
        make=lambda: RedisFactory("queue", prefetch=16),
        fanout=False,
        persistent=True,
        unreachable_publisher=_unreachable("queue", "publisher"),
        unreachable_subscriber=_unreachable("queue", "subscriber"),
    ),
    ShimCase(
        name="redis-stream",
        make=lambda: RedisFactory("streams"),
        fanout=False,
        persistent=True,
        unreachable_publisher=_unreachable("streams", "publisher"),
        unreachable_subscriber=_unreachable("streams", "subscriber"),
    ),
]
