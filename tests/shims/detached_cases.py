"""What the detached-message tests share: objects, sending them, and checks."""

from __future__ import annotations

from typing import Any

from proxystore_stream import AsyncStreamConsumer
from proxystore_stream import AsyncStreamProducer
from proxystore_stream import StreamProducer
from proxystore_stream.protocols import DetachedMessage

Case = tuple[Any, dict[str, Any] | None, bool]
"""(object, metadata, whether it travels detached) for one send."""

LATE = b"j" * (1 << 20)
"""The object `deliver_then_join` sends after the cases."""


def objects_around(threshold: int) -> list[Case]:
    """Objects at, above and below a shim's detach threshold, raw and pickled."""
    return [
        (b"x" * (1 << 20), None, True),
        (b"y" * threshold, {"i": 1}, True),
        (b"z" * (threshold - 1), None, False),
        (bytearray(b"b" * 100_000), {"i": 3}, True),  # pickle, out-of-band frames
        (b"small", None, False),
    ]


def send_cases(publisher: Any, topic: str, cases: list[Case]) -> None:
    """Send every case through a `StreamProducer` on `publisher`, then end the topic."""
    producer: StreamProducer[Any] = StreamProducer(publisher)
    for obj, metadata, _ in cases:
        producer.send(topic, obj, metadata=metadata)
    producer.close(topics=[topic], publisher=False)


async def send_cases_async(publisher: Any, topic: str, cases: list[Case]) -> None:
    """`send_cases` through an `AsyncStreamProducer`."""
    producer: AsyncStreamProducer[Any] = AsyncStreamProducer(publisher)
    for obj, metadata, _ in cases:
        await producer.send(topic, obj, metadata=metadata)
    await producer.close(topics=[topic], publisher=False)


async def deliver_then_join(
    publisher: Any, subscriber: Any, topic: str, cases: list[Case]
) -> tuple[list[Any], bytes]:
    """Cases through the async twins, then `LATE` through a plain `receive()`.

    Returns the objects the consumer handed over and the joined envelope of
    `LATE`. The caller opens and closes publisher and subscriber.
    """
    await send_cases_async(publisher, topic, cases)
    consumer: AsyncStreamConsumer[Any] = AsyncStreamConsumer(subscriber, timeout=10)
    got = [obj async for obj in consumer]
    late: AsyncStreamProducer[bytes] = AsyncStreamProducer(publisher)
    await late.send(topic, LATE)
    await late.flush()
    return got, await subscriber.receive(10)


def assert_delivered(got: list[tuple[dict[str, Any], Any]], cases: list[Case]) -> None:
    """The consumer handed over every object, of its own type, with its metadata, in order."""
    assert [obj for _, obj in got] == [obj for obj, _, _ in cases]
    assert [type(obj) for _, obj in got] == [type(obj) for obj, _, _ in cases]
    assert [m for m, _ in got] == [m or {} for _, m, _ in cases]


def detached_kinds(cases: list[Case]) -> list[bool]:
    """Which messages of `cases` (and the end of stream after them) travel detached."""
    return [detached for _, _, detached in cases] + [False]


class DetachedCapture:
    """A publisher that detaches every object (threshold 0) and keeps what it got.

    `sent` holds each `DetachedMessage` as the producer made it, its frames
    copied to bytes.
    """

    detach_threshold = 0

    def __init__(self) -> None:
        self.sent: list[DetachedMessage] = []

    def send(self, topic: str, message: bytes) -> None:
        """Refuse: with threshold 0 every object goes out detached."""
        raise AssertionError("expected a detached send (threshold 0)")

    def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Keep the detached message."""
        self.sent.append(DetachedMessage(message, [bytes(memoryview(f)) for f in frames]))

    def close(self) -> None:
        """Nothing to close."""
