"""Large objects over ZeroMQ travel beside their envelope (`DetachedMessage`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from proxystore_stream import AsyncStreamConsumer
from proxystore_stream import AsyncStreamProducer
from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream._core.detached import as_envelope
from proxystore_stream._core.envelope import decode_wire
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.filters import MetadataFilter
from proxystore_stream.protocols import DetachedMessage
from proxystore_stream.shims.zmq import DETACH_THRESHOLD
from proxystore_stream.shims.zmq import AsyncZeroMQPublisher
from proxystore_stream.shims.zmq import AsyncZeroMQSubscriber
from proxystore_stream.shims.zmq import ZeroMQPublisher
from proxystore_stream.shims.zmq import ZeroMQSubscriber
from tests.shims.detached_cases import DetachedCapture
from tests.shims.detached_cases import assert_delivered
from tests.shims.detached_cases import detached_kinds
from tests.shims.detached_cases import send_cases
from tests.shims.detached_cases import send_cases_async

LOCAL = "127.0.0.1"
BIG = DETACH_THRESHOLD
OBJECTS: list[tuple[Any, dict[str, Any] | None, bool]] = [
    # (object, metadata, travels detached on the direct path)
    (b"first", None, False),  # a topic's first object takes the batch path
    (b"x" * (1 << 20), None, True),
    (b"y" * BIG, {"i": 2}, True),
    (b"z" * (BIG - 1), None, False),
    (bytearray(b"b" * 100_000), {"i": 4}, True),  # pickle, out-of-band frames
    ({"k": b"p" * 70_000}, None, True),  # one in-band pickle frame
    (b"small", {"i": 6}, False),
]


@pytest.fixture
def endpoints() -> Iterator[tuple[ZeroMQPublisher, ZeroMQSubscriber, ZeroMQSubscriber]]:
    pub = ZeroMQPublisher(LOCAL, 0)
    consumer_side = ZeroMQSubscriber(pub.endpoint, topic="t")
    raw_side = ZeroMQSubscriber(pub.endpoint, topic="t")
    try:
        pub.wait_for_subscribers("t", 2)
        yield pub, consumer_side, raw_side
    finally:
        consumer_side.close()
        raw_side.close()
        pub.close()


def test_large_objects_travel_detached_and_arrive_whole(
    endpoints: tuple[ZeroMQPublisher, ZeroMQSubscriber, ZeroMQSubscriber],
) -> None:
    pub, consumer_side, raw_side = endpoints
    send_cases(pub, "t", OBJECTS)
    consumer: StreamConsumer[Any] = StreamConsumer(consumer_side, timeout=10)
    assert_delivered(list(consumer.iter_with_metadata()), OBJECTS)
    messages = [raw_side.receive_detached(10) for _ in range(len(OBJECTS) + 1)]
    kinds = [type(m) is DetachedMessage for m in messages]
    assert kinds == detached_kinds(OBJECTS)
    big = messages[1]
    assert isinstance(big, DetachedMessage)
    assert big.frames == [b"x" * (1 << 20)]
    assert decode_wire(big.message).events[0][1] == b""  # the envelope carries no data


def test_a_plain_receive_joins_the_frames_back_into_one_envelope(
    endpoints: tuple[ZeroMQPublisher, ZeroMQSubscriber, ZeroMQSubscriber],
) -> None:
    pub, _, raw_side = endpoints
    producer: StreamProducer[bytes] = StreamProducer(pub)
    producer.send("t", b"warm")
    producer.send("t", b"q" * (1 << 20), metadata={"m": [1, "a"]})
    assert raw_side.receive(10)
    wire = decode_wire(raw_side.receive(10))
    assert wire.events == [[0, b"q" * (1 << 20), {"m": [1, "a"]}]]
    assert wire.producer_id == producer.producer_id
    assert wire.seq == 1


def test_a_consumer_filter_drops_detached_objects(
    endpoints: tuple[ZeroMQPublisher, ZeroMQSubscriber, ZeroMQSubscriber],
) -> None:
    pub, consumer_side, _ = endpoints
    with StreamProducer[bytes](pub) as producer:
        for i in range(6):
            producer.send("t", bytes([i]) * (1 << 18), metadata={"keep": i % 2 == 0})
        producer.close(topics=["t"], publisher=False)
    consumer: StreamConsumer[bytes] = StreamConsumer(
        consumer_side, filter_=MetadataFilter({"keep": True}), timeout=10
    )
    assert [obj[0] for obj in consumer] == [0, 2, 4]


def test_signed_producers_never_detach(
    endpoints: tuple[ZeroMQPublisher, ZeroMQSubscriber, ZeroMQSubscriber],
) -> None:
    pub, consumer_side, raw_side = endpoints
    key = b"k" * 32
    with StreamProducer[bytes](pub, signing_key=key) as producer:
        for _ in range(3):
            producer.send("t", b"s" * (1 << 20))
        producer.close(topics=["t"], publisher=False)
    assert all(type(raw_side.receive_detached(10)) is bytes for _ in range(4))
    consumer: StreamConsumer[bytes] = StreamConsumer(consumer_side, signing_key=key, timeout=10)
    assert [len(obj) for obj in consumer] == [1 << 20] * 3


class _ForeignPublisher:
    """A plain PUB socket sending frames the shim did not make."""

    def __init__(self, sub: ZeroMQSubscriber) -> None:
        self._socket = zmq.Context.instance().socket(zmq.PUB)
        self._socket.connect(sub.endpoint)
        self._sub = sub

    def deliver(self, parts: list[bytes]) -> Any:
        """Resend until the connection is up; return what (or which error) arrived."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self._socket.send_multipart(parts)
            try:
                return self._sub.receive_detached(0.05)
            except StreamTimeoutError:
                continue
        raise AssertionError("the foreign publisher never got through")

    def close(self) -> None:
        self._socket.close(linger=0)


@pytest.fixture
def foreign() -> Iterator[tuple[_ForeignPublisher, ZeroMQSubscriber]]:
    sub = ZeroMQSubscriber(LOCAL, 0, bind=True, topic="t")
    publisher = _ForeignPublisher(sub)
    try:
        yield publisher, sub
    finally:
        publisher.close()
        sub.close()


def _detached_envelope(data_frame: bytes) -> tuple[bytes, bytes]:
    """A real detached message's envelope and frame, as the producer makes them."""
    capture = DetachedCapture()
    producer: StreamProducer[bytes] = StreamProducer(capture)
    producer._state._topic("t")  # skip the batch path of a topic's first object
    producer.send("t", data_frame)
    ((message, frames),) = capture.sent
    return message, frames[0]


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("garbage envelope", [b"t\x00", b"not an envelope", b"frame"]),
        ("envelope with data", [b"t\x00", b"DATA", b"frame"]),
    ],
)
def test_malformed_detached_messages_raise_naming_the_topic(
    foreign: tuple[_ForeignPublisher, ZeroMQSubscriber],
    name: str,
    parts: list[bytes],
) -> None:
    publisher, sub = foreign
    if parts[1] == b"DATA":  # a valid one-object envelope whose data is not empty
        parts[1] = _inline_envelope(b"inline data")
    arrived = publisher.deliver(parts)
    assert type(arrived) is DetachedMessage
    with pytest.raises(MalformedMessageError) as error:
        as_envelope(arrived, topic=sub._read.topic)
    assert error.value.topic == "t"
    consumer: StreamConsumer[bytes] = StreamConsumer(sub)
    with pytest.raises(MalformedMessageError):
        consumer._state.take_detached(*arrived)


class _Collect:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def send(self, topic: str, message: bytes) -> None:
        self.messages.append(message)

    def close(self) -> None:
        """Nothing to close."""


def _inline_envelope(data: bytes) -> bytes:
    collect = _Collect()
    producer: StreamProducer[bytes] = StreamProducer(collect)
    producer._state._topic("t")
    producer.send("t", data)
    return collect.messages[0]


def test_a_signing_consumer_refuses_detached_frames_and_can_skip_them(
    foreign: tuple[_ForeignPublisher, ZeroMQSubscriber],
) -> None:
    publisher, sub = foreign
    message, frame = _detached_envelope(b"d" * 1000)
    arrived = publisher.deliver([b"t\x00", message, frame])
    assert arrived == DetachedMessage(message, [frame])
    strict: StreamConsumer[bytes] = StreamConsumer(sub, signing_key=b"k" * 32)
    with pytest.raises(MalformedMessageError, match="signature"):
        strict._state.take_detached(*arrived)
    lenient: StreamConsumer[bytes] = StreamConsumer(sub, signing_key=b"k" * 32, skip_malformed=True)
    assert lenient._state.take_detached(*arrived) is not None  # NEED_MESSAGE: skipped
    unsigned: StreamConsumer[bytes] = StreamConsumer(sub)
    step = unsigned._state.take_detached(*arrived)
    assert step.data == b"d" * 1000  # type: ignore[union-attr]


def test_async_twins_detach_and_join_the_same_way() -> None:
    async def main() -> tuple[list[Any], list[bool]]:
        pub = AsyncZeroMQPublisher(LOCAL, 0)
        consumer_side = AsyncZeroMQSubscriber(pub.endpoint, topic="t")
        raw_side = AsyncZeroMQSubscriber(pub.endpoint, topic="t")
        try:
            await pub.wait_for_subscribers("t", 2)
            await send_cases_async(pub, "t", OBJECTS)
            consumer: AsyncStreamConsumer[Any] = AsyncStreamConsumer(consumer_side, timeout=10)
            got = [obj async for obj in consumer]
            kinds = []
            for _ in range(len(OBJECTS) + 1):
                kinds.append(type(await raw_side.receive_detached(10)) is DetachedMessage)
            return got, kinds
        finally:
            await consumer_side.close()
            await raw_side.close()
            await pub.close()

    got, kinds = asyncio.run(main())
    assert got == [obj for obj, _, _ in OBJECTS]
    assert kinds == detached_kinds(OBJECTS)


def test_an_async_plain_receive_joins_the_frames() -> None:
    async def main() -> bytes:
        pub = AsyncZeroMQPublisher(LOCAL, 0)
        sub = AsyncZeroMQSubscriber(pub.endpoint, topic="t")
        try:
            await pub.wait_for_subscribers("t")
            producer: AsyncStreamProducer[bytes] = AsyncStreamProducer(pub)
            await producer.send("t", b"warm")
            await producer.send("t", b"j" * (1 << 20))
            await sub.receive(10)
            return await sub.receive(10)
        finally:
            await sub.close()
            await pub.close()

    assert decode_wire(asyncio.run(main())).events[0][1] == b"j" * (1 << 20)


def test_a_batch_holding_one_large_object_travels_detached(
    endpoints: tuple[ZeroMQPublisher, ZeroMQSubscriber, ZeroMQSubscriber],
) -> None:
    pub, consumer_side, raw_side = endpoints
    sent = [bytes([i]) * (1 << 20) for i in range(3)] + [b"a", b"b", b"c"]
    with StreamProducer[bytes](pub, batch_size=64) as producer:
        for obj in sent:  # each 1 MiB object fills a batch by itself
            producer.send("t", obj)
        producer.flush()
        producer.close(topics=["t"], publisher=False)
    consumer: StreamConsumer[bytes] = StreamConsumer(consumer_side, timeout=10)
    assert list(consumer) == sent
    kinds = [type(raw_side.receive_detached(10)).__name__ for _ in range(5)]
    # Three detached objects, one batch of three small ones, the end of stream.
    assert kinds == ["DetachedMessage"] * 3 + ["bytes", "bytes"]
    with pytest.raises(StreamTimeoutError):
        raw_side.receive_detached(0.2)


def test_a_detached_send_without_frames_is_refused_and_sends_nothing(
    endpoints: tuple[ZeroMQPublisher, ZeroMQSubscriber, ZeroMQSubscriber],
) -> None:
    pub, _, raw_side = endpoints
    with pytest.raises(ValueError, match="at least one frame"):
        pub.send_detached("t", b"envelope", [])
    pub.send("t", b"next")  # the socket is not left inside an open message
    assert raw_side.receive_detached(10) == b"next"
