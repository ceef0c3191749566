"""Large objects on Redis pub/sub and list queues: one envelope, written around the object.

A pub/sub message or list element holds one value, so these publishers take
a `DetachedMessage` and write the envelope it stands for (the same bytes
`send(attach(...))` would write) with the object's frames in place, without
copying them into it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from proxystore_stream import AsyncStreamConsumer
from proxystore_stream import StreamConsumer
from proxystore_stream._core.detached import attach
from proxystore_stream._core.detached import detach
from proxystore_stream._core.envelope import EMPTY_METADATA
from proxystore_stream._core.envelope import single_inline_head
from proxystore_stream._core.envelope import single_inline_tail
from tests.shims.detached_cases import assert_delivered
from tests.shims.detached_cases import detached_kinds
from tests.shims.detached_cases import objects_around
from tests.shims.detached_cases import send_cases
from tests.shims.detached_cases import send_cases_async

redis = pytest.importorskip("redis")

from proxystore_stream.shims.redis import AsyncRedisPublisher  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisQueuePublisher  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisQueueSubscriber  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisSubscriber  # noqa: E402
from proxystore_stream.shims.redis import RedisPublisher  # noqa: E402
from proxystore_stream.shims.redis import RedisQueuePublisher  # noqa: E402
from proxystore_stream.shims.redis import RedisQueueSubscriber  # noqa: E402
from proxystore_stream.shims.redis import RedisSubscriber  # noqa: E402
from proxystore_stream.shims.redis._publish import DETACH_THRESHOLD  # noqa: E402

HOST, PORT = "127.0.0.1", 6379
OBJECTS = objects_around(DETACH_THRESHOLD)

# Frames of every kind a serializer hands over: bytes, a mutable buffer, a
# 2-D view (NumPy-like, written as flat bytes), several of them.
FRAME_SETS = [
    [b"a" * (1 << 20)],
    [b"h" * 10, bytearray(b"m" * 70_000), b"t" * 3],
    [memoryview(bytearray(range(256)) * 300).cast("B", (300, 256))],
]


@pytest.fixture
def topic(raw: Any) -> Iterator[str]:
    made = f"pss-test-{uuid.uuid4().hex[:12]}"
    yield made
    raw.delete(made)


def _detached(frames: list[Any]) -> tuple[bytes, list[Any]]:
    head = single_inline_head("t", "producer")
    message, frames = detach(head, 7, single_inline_tail("raw"), frames, EMPTY_METADATA)
    return message, frames


@pytest.mark.parametrize("frames", FRAME_SETS, ids=["one", "several", "2-d view"])
def test_the_list_holds_the_joined_envelope(raw: Any, topic: str, frames: list[Any]) -> None:
    message, frames = _detached(frames)
    with RedisQueuePublisher(HOST, PORT) as pub:
        pub.send_detached(topic, message, frames)

    async def send_async() -> None:
        async with AsyncRedisQueuePublisher(HOST, PORT) as apub:
            await apub.send_detached(topic, message, frames)

    asyncio.run(send_async())
    expected = attach(message, frames)
    assert raw.lrange(topic, 0, -1) == [expected, expected]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_pubsub_subscribers_get_the_joined_envelope(mode: str) -> None:
    channel = f"pss-test-{uuid.uuid4().hex[:12]}"
    message, frames = _detached(FRAME_SETS[1])
    if mode == "sync":
        with RedisPublisher(HOST, PORT) as pub, RedisSubscriber(HOST, PORT, channel) as sub:
            pub.send_detached(channel, message, frames)
            got = sub.receive(10)
    else:

        async def main() -> bytes:
            async with (
                AsyncRedisPublisher(HOST, PORT) as apub,
                AsyncRedisSubscriber(HOST, PORT, channel) as asub,
            ):
                await apub.send_detached(channel, message, frames)
                return await asub.receive(10)

        got = asyncio.run(main())
    assert got == attach(message, frames)


class _CountingQueuePublisher(RedisQueuePublisher):
    detached = 0

    def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        self.detached += 1
        super().send_detached(topic, message, frames)


def test_the_stream_producer_hands_large_objects_over_detached(topic: str) -> None:
    with (
        _CountingQueuePublisher(HOST, PORT) as pub,
        RedisQueueSubscriber(HOST, PORT, topic) as sub,
    ):
        send_cases(pub, topic, OBJECTS)
        consumer: StreamConsumer[Any] = StreamConsumer(sub, timeout=10)
        assert_delivered(list(consumer.iter_with_metadata()), OBJECTS)
        assert pub.detached == sum(detached_kinds(OBJECTS))


@pytest.mark.parametrize("mode", ["list", "pubsub"])
def test_async_twins_deliver_large_objects(topic: str, mode: str) -> None:
    async def main() -> list[tuple[dict[str, Any], Any]]:
        pub: Any
        sub: Any
        if mode == "list":
            pub = AsyncRedisQueuePublisher(HOST, PORT)
            sub = AsyncRedisQueueSubscriber(HOST, PORT, topic)
        else:
            pub = AsyncRedisPublisher(HOST, PORT)
            sub = AsyncRedisSubscriber(HOST, PORT, topic)
        try:
            await sub.open()
            await send_cases_async(pub, topic, OBJECTS)
            consumer: AsyncStreamConsumer[Any] = AsyncStreamConsumer(sub, timeout=10)
            return [item async for item in consumer.iter_with_metadata()]
        finally:
            await sub.close()
            await pub.close()

    assert_delivered(asyncio.run(main()), OBJECTS)
