"""Large objects in Redis Streams: envelope and object in entry fields of their own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream._core.envelope import decode_wire
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.protocols import DetachedMessage
from tests.shims.detached_cases import assert_delivered
from tests.shims.detached_cases import deliver_then_join
from tests.shims.detached_cases import detached_kinds
from tests.shims.detached_cases import objects_around
from tests.shims.detached_cases import send_cases

redis = pytest.importorskip("redis")

from proxystore_stream.shims.redis import AsyncRedisStreamPublisher  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisStreamSubscriber  # noqa: E402
from proxystore_stream.shims.redis import RedisStreamPublisher  # noqa: E402
from proxystore_stream.shims.redis import RedisStreamSubscriber  # noqa: E402
from proxystore_stream.shims.redis.streams import DETACH_THRESHOLD  # noqa: E402
from proxystore_stream.shims.redis.streams import FIELD  # noqa: E402
from proxystore_stream.shims.redis.streams import OBJECT_FIELD  # noqa: E402

HOST, PORT = "127.0.0.1", 6379
OBJECTS = objects_around(DETACH_THRESHOLD)


@pytest.fixture
def topic(raw: Any) -> Iterator[str]:
    made = f"pss-test-{uuid.uuid4().hex[:12]}"
    yield made
    raw.delete(made)


def test_large_objects_get_a_field_of_their_own(raw: Any, topic: str) -> None:
    with (
        RedisStreamPublisher(HOST, PORT) as pub,
        RedisStreamSubscriber(HOST, PORT, topic, group="consumer") as consumer_side,
        RedisStreamSubscriber(HOST, PORT, topic, group="raw") as raw_side,
    ):
        send_cases(pub, topic, OBJECTS)
        consumer: StreamConsumer[Any] = StreamConsumer(consumer_side, timeout=10)
        assert_delivered(list(consumer.iter_with_metadata()), OBJECTS)
        messages = [raw_side.receive_detached(10) for _ in range(len(OBJECTS) + 1)]
        assert [type(m) is DetachedMessage for m in messages] == detached_kinds(OBJECTS)
    entries = raw.xrange(topic)
    assert set(entries[0][1]) == {FIELD, OBJECT_FIELD}
    assert entries[0][1][OBJECT_FIELD] == b"x" * (1 << 20)
    assert set(entries[2][1]) == {FIELD}


def test_a_plain_receive_joins_the_fields(topic: str) -> None:
    with (
        RedisStreamPublisher(HOST, PORT) as pub,
        RedisStreamSubscriber(HOST, PORT, topic, group="g") as sub,
    ):
        producer: StreamProducer[bytes] = StreamProducer(pub)
        producer.send(topic, b"q" * (1 << 20), metadata={"m": 1})
        wire = decode_wire(sub.receive(10))
        assert wire.events == [[0, b"q" * (1 << 20), {"m": 1}]]


def test_an_object_field_beside_a_foreign_message_is_malformed(raw: Any, topic: str) -> None:
    with RedisStreamSubscriber(HOST, PORT, topic, group="g") as sub:
        raw.xadd(topic, {FIELD: b"not an envelope", OBJECT_FIELD: b"object"})
        with pytest.raises(MalformedMessageError) as error:
            sub.receive(10)
        assert error.value.topic == topic
        raw.xadd(topic, {FIELD: b"plain"})
        assert sub.receive(10) == b"plain"  # the bad entry did not block the stream


def test_async_twins_detach_and_join_the_same_way(topic: str) -> None:
    async def main() -> tuple[list[Any], bytes]:
        pub = AsyncRedisStreamPublisher(HOST, PORT)
        sub = AsyncRedisStreamSubscriber(HOST, PORT, topic, group="g")
        try:
            await sub.open()
            return await deliver_then_join(pub, sub, topic, OBJECTS)
        finally:
            await sub.close()
            await pub.close()

    got, joined = asyncio.run(main())
    assert got == [obj for obj, _, _ in OBJECTS]
    assert decode_wire(joined).events[0][1] == b"j" * (1 << 20)
