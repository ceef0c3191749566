"""AsyncStreamProducer/AsyncStreamConsumer and the sync<->async adapters."""

from __future__ import annotations

import asyncio
import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from proxystore_stream import AsyncStreamConsumer
from proxystore_stream import AsyncStreamProducer
from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream.adapters import BlockingPublisher
from proxystore_stream.adapters import BlockingSubscriber
from proxystore_stream.adapters import ThreadedAsyncPublisher
from proxystore_stream.adapters import ThreadedAsyncSubscriber
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.exceptions import TopicClosedError
from proxystore_stream.proxy import Proxy
from proxystore_stream.shims.queue import AsyncQueuePublisher
from proxystore_stream.shims.queue import AsyncQueueSubscriber
from proxystore_stream.shims.queue import QueuePublisher
from proxystore_stream.shims.queue import QueueSubscriber
from proxystore_stream.store import FileConnector
from proxystore_stream.store import Store


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_round_trip_with_store_and_filter(tmp_path: Path) -> None:
    async def main() -> None:
        q: queue.Queue[bytes] = queue.Queue()
        store: Store[Any] = Store("s", FileConnector(tmp_path))
        async with AsyncStreamProducer(
            AsyncQueuePublisher({"t": q}),
            default_store=store,
            batch_size=4,
        ) as producer:
            for i in range(10):
                await producer.send("t", {"i": i}, metadata={"i": i})
            await producer.close_topics("t")
            with pytest.raises(TopicClosedError):
                await producer.send("t", 1)
        consumer: AsyncStreamConsumer[Any] = AsyncStreamConsumer(
            AsyncQueueSubscriber(q),
            filter_=lambda m: m["i"] % 3 == 0,
        )
        items = [item async for item in consumer]
        assert all(isinstance(item, Proxy) for item in items)
        assert [item["i"] for item in items] == [1, 2, 4, 5, 7, 8]
        assert list(tmp_path.iterdir()) == [], "filtered objects were evicted, others resolved"

    run(main())


def test_async_next_variants_timeout_and_malformed() -> None:
    async def main() -> None:
        q: queue.Queue[bytes] = queue.Queue()
        producer: AsyncStreamProducer[Any] = AsyncStreamProducer(AsyncQueuePublisher({"t": q}))
        consumer: AsyncStreamConsumer[Any] = AsyncStreamConsumer(
            AsyncQueueSubscriber(q), topics=["t"]
        )
        await producer.send("t", "a", metadata={"k": 1})
        await producer.send("t", "b")
        assert await consumer.next_with_metadata() == ({"k": 1}, "a")
        assert await consumer.next_object() == "b"
        with pytest.raises(StreamTimeoutError):
            await consumer.next(timeout=0.05)
        q.put(b"junk")
        with pytest.raises(MalformedMessageError, match="topic 't'"):
            await consumer.next(timeout=1)
        await producer.close(topics=["t"])
        with pytest.raises(StopAsyncIteration):
            await consumer.next(timeout=1)

    run(main())


def test_cancelled_next_loses_no_message() -> None:
    async def main() -> None:
        q: queue.Queue[bytes] = queue.Queue()
        consumer: AsyncStreamConsumer[Any] = AsyncStreamConsumer(AsyncQueueSubscriber(q))
        producer: AsyncStreamProducer[Any] = AsyncStreamProducer(AsyncQueuePublisher({"t": q}))
        for _ in range(5):
            task = asyncio.create_task(consumer.next())
            await asyncio.sleep(0.01)  # let it block waiting in its worker thread
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        for i in range(3):
            await producer.send("t", i)
        assert [await consumer.next(timeout=5) for _ in range(3)] == [0, 1, 2]

    run(main())


def test_sync_producer_to_async_consumer_across_threads() -> None:
    q: queue.Queue[bytes] = queue.Queue()

    def produce() -> None:
        with StreamProducer(QueuePublisher({"t": q})) as producer:
            for i in range(200):
                producer.send("t", i)
            producer.close_topics("t")

    async def consume() -> list[int]:
        return [i async for i in AsyncStreamConsumer[int](AsyncQueueSubscriber(q))]

    thread = threading.Thread(target=produce)
    thread.start()
    assert run(consume()) == list(range(200))
    thread.join(10)


def test_threaded_async_adapters_over_sync_shims() -> None:
    async def main() -> None:
        q: queue.Queue[bytes] = queue.Queue()
        publisher = ThreadedAsyncPublisher(QueuePublisher({"t": q}))
        subscriber = ThreadedAsyncSubscriber(QueueSubscriber(q))
        producer: AsyncStreamProducer[Any] = AsyncStreamProducer(publisher)
        for i in range(20):
            await producer.send("t", i)
        await producer.close(topics=["t"])
        assert [i async for i in AsyncStreamConsumer[Any](subscriber)] == list(range(20))
        await subscriber.close()

    run(main())
    with pytest.raises(TypeError, match="receive"):
        ThreadedAsyncSubscriber(object())  # type: ignore[arg-type]


def test_blocking_adapters_over_async_shims() -> None:
    q: queue.Queue[bytes] = queue.Queue()
    publisher = BlockingPublisher(lambda: AsyncQueuePublisher({"t": q}))
    subscriber = BlockingSubscriber(lambda: AsyncQueueSubscriber(q))
    producer: StreamProducer[Any] = StreamProducer(publisher)
    for i in range(20):
        producer.send("t", i)
    producer.close(topics=["t"])
    consumer: StreamConsumer[Any] = StreamConsumer(subscriber)
    assert list(consumer) == list(range(20))
    with pytest.raises(StreamTimeoutError):
        subscriber.receive(0.05)
    consumer.close()
    consumer.close()
    assert list(subscriber) == []


class _CountingSubscriber:
    """An async subscriber over a list of messages that counts how it was asked."""

    def __init__(self, messages: list[bytes], *, ready: bool = True) -> None:
        self.messages = messages
        self.arrived = asyncio.Event()
        self.ready_calls = self.awaited = 0
        self.closed = False
        if not ready:
            self.receive_ready = None  # type: ignore[assignment]

    def receive_ready(self) -> bytes | None:
        self.ready_calls += 1
        if self.closed or not self.messages:
            return None
        return self.messages.pop(0)

    async def receive(self, timeout: float | None = None) -> bytes:
        self.awaited += 1
        while True:
            if self.closed:
                raise SubscriberClosedError("closed")
            if self.messages:
                return self.messages.pop(0)
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout)

    def __aiter__(self) -> Any:
        raise AssertionError("the consumer uses receive")

    async def close(self) -> None:
        self.closed = True
        self.arrived.set()


def _envelopes(count: int) -> list[bytes]:
    q: queue.Queue[bytes] = queue.Queue()
    producer: StreamProducer[Any] = StreamProducer(QueuePublisher({"t": q}))
    for i in range(count):
        producer.send("t", i)
    producer.close(topics=["t"])
    return [q.get_nowait() for _ in range(q.qsize())]


def test_async_consumer_takes_ready_messages_without_awaiting_receive() -> None:
    async def main() -> None:
        subscriber = _CountingSubscriber(_envelopes(50))
        consumer: AsyncStreamConsumer[int] = AsyncStreamConsumer(subscriber)
        assert [obj async for obj in consumer] == list(range(50))
        assert subscriber.awaited == 0  # every message, the end included, was ready
        assert subscriber.ready_calls == 51

    run(main())


def test_async_consumer_awaits_receive_when_nothing_is_ready() -> None:
    async def main() -> None:
        subscriber = _CountingSubscriber([])
        consumer: AsyncStreamConsumer[int] = AsyncStreamConsumer(subscriber)
        got: list[int] = []

        async def consume() -> None:
            got.extend([obj async for obj in consumer])

        task = asyncio.create_task(consume())
        for sent, envelope in enumerate(_envelopes(3), 1):  # each after the consumer waits
            for _ in range(100):  # bounded: the consumer reaches its wait in a few turns
                if subscriber.awaited > len(got) or task.done():
                    break
                await asyncio.sleep(0)
            subscriber.messages.append(envelope)
            subscriber.arrived.set()
            for _ in range(100):
                if len(got) == sent or task.done():
                    break
                await asyncio.sleep(0)
        await asyncio.wait_for(task, 10)
        assert got == [0, 1, 2]
        assert subscriber.awaited == 4  # each object and the end waited for receive

    run(main())


def test_async_consumer_without_receive_ready_and_after_close() -> None:
    async def main() -> None:
        plain = _CountingSubscriber(_envelopes(5), ready=False)
        consumer: AsyncStreamConsumer[int] = AsyncStreamConsumer(plain)
        assert [obj async for obj in consumer] == list(range(5))
        assert plain.awaited == 6

        closing = _CountingSubscriber(_envelopes(5)[:2])  # two objects, no end of stream
        consumer = AsyncStreamConsumer(closing)
        assert await consumer.next() == 0
        await consumer.close()
        # A closed subscriber has nothing ready: the awaiting path ends the stream.
        assert [obj async for obj in consumer] == []
        assert closing.awaited == 1

    run(main())
