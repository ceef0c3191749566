"""Bench targets for Redis: ``redis``, ``redis-queue`` and ``redis-stream``.

| name | ours | bare redis-py |
| --- | --- | --- |
| ``redis`` | `RedisPublisher` / `RedisSubscriber` | PUBLISH + ``pubsub().get_message`` loop |
| ``redis-queue`` | `RedisQueuePublisher` / `RedisQueueSubscriber` (default) | LPUSH + BRPOP |
| ``redis-queue-prefetch`` | the same with ``prefetch=16`` (opt-in read-ahead) | LPUSH + BRPOP |
| ``redis-stream`` | `RedisStreamPublisher` / `RedisStreamSubscriber` | XADD + XREADGROUP/XACK |

The broker is taken from ``PSS_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``). The bare clients use RESP2 like our shims,
so the comparison measures the shim, not redis-py's parser choice (its
default RESP3 is several times slower for large pub/sub messages). Streams
made by a run are deleted when its subscriber closes (1 MiB runs leave
hundreds of MB each otherwise).

``redis-queue-prefetch`` measures the list queue reading ahead like the
Streams subscriber does by default (``prefetch=16``): it still moves every
message into its processing list before handing it over (at least once),
which BRPOP (at most once) does not.

Run ``python -m proxystore_stream.cli.targets.redis`` for a smoke check and
a side-by-side timing of our shims against bare redis-py.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from typing import Any
from typing import cast

try:
    import redis
except ImportError as e:  # pragma: no cover - exercised by the extras test
    from proxystore_stream.exceptions import require

    require(__name__, "redis", "redis", e)

from proxystore_stream.cli.targets import BareClient
from proxystore_stream.cli.targets import time_through
from proxystore_stream.shims.redis import AsyncRedisPublisher
from proxystore_stream.shims.redis import AsyncRedisQueuePublisher
from proxystore_stream.shims.redis import AsyncRedisQueueSubscriber
from proxystore_stream.shims.redis import AsyncRedisStreamPublisher
from proxystore_stream.shims.redis import AsyncRedisStreamSubscriber
from proxystore_stream.shims.redis import AsyncRedisSubscriber
from proxystore_stream.shims.redis import RedisPublisher
from proxystore_stream.shims.redis import RedisQueuePublisher
from proxystore_stream.shims.redis import RedisQueueSubscriber
from proxystore_stream.shims.redis import RedisStreamPublisher
from proxystore_stream.shims.redis import RedisStreamSubscriber
from proxystore_stream.shims.redis import RedisSubscriber
from proxystore_stream.shims.redis.streams import DEFAULT_PREFETCH
from proxystore_stream.shims.redis.streams import FIELD

__all__ = ["BARE_LABELS", "open_async_endpoints", "open_bare", "open_endpoints"]

NAMES = ("redis", "redis-queue", "redis-queue-prefetch", "redis-stream")
BARE_LABELS = {
    "redis": "bare redis-py pub/sub",
    "redis-queue": "bare redis-py LPUSH/BRPOP",
    "redis-queue-prefetch": "bare redis-py LPUSH/BRPOP",
    "redis-stream": "bare redis-py XADD/XREADGROUP",
}
"""How the bench table names each bare client."""

_PROTOCOL = 2


def _url() -> str:
    return os.environ.get("PSS_REDIS_URL", "redis://127.0.0.1:6379/0")


def _check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"name must be one of {list(NAMES)}, not {name!r}")


def _prefetch(name: str) -> int:
    """The list-queue subscriber's read-ahead for bench target `name`."""
    return DEFAULT_PREFETCH if name == "redis-queue-prefetch" else 1


def _group() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def _delete(topics: list[str]) -> None:
    with redis.Redis.from_url(_url()) as client:
        client.delete(*topics)


class _BenchStreamSubscriber(RedisStreamSubscriber):
    """Deletes its streams when closed, so a bench run leaves nothing in Redis."""

    def close(self) -> None:
        try:
            _delete(self._reader.topics)
        finally:
            super().close()


class _AsyncBenchStreamSubscriber(AsyncRedisStreamSubscriber):
    """Async twin of `_BenchStreamSubscriber`."""

    async def close(self) -> None:
        try:
            _delete(self._reader.topics)
        finally:
            await super().close()


def open_endpoints(name: str, topic: str) -> tuple[Any, Any]:
    """Return our publisher and a subscriber ready to receive `topic`.

    Args:
        name: ``"redis"``, ``"redis-queue"``, ``"redis-queue-prefetch"`` or ``"redis-stream"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not a Redis shim.
        BrokerConnectionError: If Redis cannot be reached.
    """
    _check(name)
    url = _url()
    publisher: Any
    if name == "redis":
        publisher = RedisPublisher.from_url(url)
    elif name.startswith("redis-queue"):
        publisher = RedisQueuePublisher.from_url(url)
    else:
        publisher = RedisStreamPublisher.from_url(url)
    try:
        subscriber: Any
        if name == "redis":
            subscriber = RedisSubscriber.from_url(url, topic)
        elif name.startswith("redis-queue"):
            subscriber = RedisQueueSubscriber.from_url(url, topic, prefetch=_prefetch(name))
        else:
            subscriber = _BenchStreamSubscriber.from_url(url, topic, group=_group())
    except BaseException:
        publisher.close()
        raise
    return publisher, subscriber


async def open_async_endpoints(name: str, topic: str) -> tuple[Any, Any]:
    """Return the async twins of `open_endpoints`, subscribed and ready.

    Args:
        name: ``"redis"``, ``"redis-queue"``, ``"redis-queue-prefetch"`` or ``"redis-stream"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not a Redis shim.
        BrokerConnectionError: If Redis cannot be reached.
    """
    _check(name)
    url = _url()
    publisher: Any
    subscriber: Any
    if name == "redis":
        publisher = AsyncRedisPublisher.from_url(url)
        subscriber = AsyncRedisSubscriber.from_url(url, topic)
    elif name.startswith("redis-queue"):
        publisher = AsyncRedisQueuePublisher.from_url(url)
        subscriber = AsyncRedisQueueSubscriber.from_url(url, topic, prefetch=_prefetch(name))
    else:
        publisher = AsyncRedisStreamPublisher.from_url(url)
        subscriber = _AsyncBenchStreamSubscriber.from_url(url, topic, group=_group())
    try:
        await subscriber.open()
    except BaseException:
        await publisher.close()
        raise
    return publisher, subscriber


class _BarePubSub:
    """PUBLISH, and a ``pubsub()`` subscribed before returning, read with get_message."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._pub = redis.Redis.from_url(_url(), protocol=_PROTOCOL)
        self._sub = redis.Redis.from_url(_url(), protocol=_PROTOCOL)
        self._pubsub = self._sub.pubsub()  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(topic)
        # The confirmation proves the subscription reached Redis.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "subscribe":
                return
        raise RuntimeError(f"Redis did not confirm the subscription to {topic!r}")

    def send(self, message: bytes) -> None:
        self._pub.publish(self._topic, message)

    def flush(self) -> None:
        pass

    def receive(self) -> bytes:
        while True:
            # None blocks until a message comes (redis-py's docs); its annotation
            # says float since redis-py 8.2.
            message = self._pubsub.get_message(
                ignore_subscribe_messages=True,
                timeout=None,  # type: ignore[arg-type]
            )
            if message is not None and message["type"] == "message":
                return message["data"]  # type: ignore[no-any-return]

    def close(self) -> None:
        self._pubsub.close()
        self._sub.close()
        self._pub.close()


class _BareList:
    """LPUSH, and BRPOP with no timeout."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._pub = redis.Redis.from_url(_url(), protocol=_PROTOCOL)
        self._sub = redis.Redis.from_url(_url(), protocol=_PROTOCOL, socket_timeout=None)

    def send(self, message: bytes) -> None:
        self._pub.lpush(self._topic, message)

    def flush(self) -> None:
        pass

    def receive(self) -> bytes:
        _, message = self._sub.brpop([self._topic], 0)  # type: ignore[misc]
        return cast(bytes, message)

    def close(self) -> None:
        self._pub.delete(self._topic)
        self._sub.close()
        self._pub.close()


class _BareStream:
    """XADD, and XREADGROUP in batches with one XACK per handed message."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._group = _group()
        self._pub = redis.Redis.from_url(_url(), protocol=_PROTOCOL)
        self._sub = redis.Redis.from_url(_url(), protocol=_PROTOCOL, socket_timeout=None)
        self._sub.xgroup_create(topic, self._group, "0", mkstream=True)
        self._batch: deque[tuple[bytes, bytes]] = deque()
        self._last: bytes | None = None

    def send(self, message: bytes) -> None:
        self._pub.xadd(self._topic, {FIELD: message})

    def flush(self) -> None:
        pass

    def receive(self) -> bytes:
        if self._last is not None:
            self._sub.xack(self._topic, self._group, self._last)
        while not self._batch:
            reply = self._sub.xreadgroup(
                self._group,
                "bare",
                {self._topic: ">"},
                count=DEFAULT_PREFETCH,
                block=0,
            )
            replies = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], reply)
            for _stream, entries in replies or ():
                self._batch.extend((i, fields[FIELD]) for i, fields in entries)
        self._last, message = self._batch.popleft()
        return message

    def close(self) -> None:
        self._pub.delete(self._topic)
        self._sub.close()
        self._pub.close()


def open_bare(name: str, topic: str) -> BareClient:
    """Return bare redis-py sending and receiving `topic`, ready to receive.

    Args:
        name: ``"redis"``, ``"redis-queue"``, ``"redis-queue-prefetch"`` or ``"redis-stream"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not a Redis shim.
    """
    _check(name)
    if name == "redis":
        return _BarePubSub(topic)
    if name.startswith("redis-queue"):
        return _BareList(topic)
    return _BareStream(topic)


def compare(name: str, size: int, count: int) -> tuple[float, float]:
    """Return messages per second through ours and through bare redis-py."""
    payload = os.urandom(size)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    pub, sub = open_endpoints(name, topic)
    try:
        ours = time_through(lambda m: pub.send(topic, m), lambda: None, sub.receive, payload, count)
    finally:
        sub.close()
        pub.close()
        if name != "redis":
            with redis.Redis.from_url(_url()) as client:
                client.delete(topic)
    bare = open_bare(name, topic + "-bare")
    try:
        theirs = time_through(bare.send, bare.flush, bare.receive, payload, count)
    finally:
        bare.close()
    return count / ours, count / theirs


if __name__ == "__main__":
    for shim in NAMES:
        compare(shim, 100, 100)  # smoke: 100 messages through both
        for size, count in ((100, 20_000), (1024 * 1024, 200)):
            # Best of three alternating rounds: the two share one machine.
            rounds = [compare(shim, size, count) for _ in range(3)]
            ours = max(r[0] for r in rounds)
            theirs = max(r[1] for r in rounds)
            print(
                f"{shim:13} {size:>8} B  ours {ours:9.0f} msg/s  "
                f"bare {theirs:9.0f} msg/s  ratio {ours / theirs:.2f}",
            )
