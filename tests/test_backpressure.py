"""A slow consumer cannot make a producer's memory grow without bound (in-process shims).

Each test drives `StreamProducer` over one shim while nobody reads, and
checks the policy by counting: the queue shim with a bounded queue blocks
(or raises `BufferFullError`), a `LocalBroker` "block" subscriber makes the
publisher wait and a "leaky" one keeps the newest messages, and a ZeroMQ PUB
socket drops at its high-water mark while the producer's memory stays flat.
The shim-level details are in tests/shims/test_local.py and test_zmq.py.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest

from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream.exceptions import BufferFullError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.shims.local import LocalBroker
from proxystore_stream.shims.local import LocalPublisher
from proxystore_stream.shims.local import LocalSubscriber
from proxystore_stream.shims.queue import AsyncQueuePublisher
from proxystore_stream.shims.queue import QueuePublisher
from proxystore_stream.shims.queue import QueueSubscriber

MAXSIZE = 8
COUNT = 100
WAIT = 10.0  # seconds a bounded poll waits at most


class Sender:
    """Sends `count` objects in a thread and counts the sends that returned."""

    def __init__(self, producer: StreamProducer[Any], count: int, *, close: bool = False) -> None:
        self.producer = producer
        self.returned = 0
        self.errors: list[BaseException] = []
        self._count = count
        self._close = close
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for i in range(self._count):
                self.producer.send("t", i, metadata={"i": i})
                self.returned += 1
            if self._close:
                self.producer.close_topics("t")
        except BaseException as exc:
            self.errors.append(exc)

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the producer did not finish"
        assert self.errors == []


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture(params=["thread-queue", "process-queue"])
def bounded(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "thread-queue":
        yield queue.Queue(maxsize=MAXSIZE)
        return
    q: Any = multiprocessing.get_context("spawn").Queue(maxsize=MAXSIZE)
    yield q
    q.cancel_join_thread()
    q.close()


def test_bounded_queue_blocks_the_producer_at_maxsize(bounded: Any) -> None:
    producer: StreamProducer[int] = StreamProducer(QueuePublisher({"t": bounded}, block=True))
    sender = Sender(producer, COUNT)
    wait_until(lambda: sender.returned == MAXSIZE)
    sender.thread.join(0.3)  # it has every chance to run ahead, and must not
    assert sender.thread.is_alive()
    assert sender.returned == MAXSIZE, "send number MAXSIZE+1 must wait for room"
    assert bounded.qsize() == MAXSIZE
    consumer: StreamConsumer[int] = StreamConsumer(QueueSubscriber(bounded))
    received = []
    for _ in range(COUNT):
        received.append(consumer.next(timeout=WAIT))
        assert bounded.qsize() <= MAXSIZE
    sender.join()
    assert received == list(range(COUNT))
    assert sender.returned == COUNT


def test_bounded_queue_without_blocking_raises_buffer_full(bounded: Any) -> None:
    producer: StreamProducer[int] = StreamProducer(QueuePublisher({"t": bounded}, block=False))
    for i in range(MAXSIZE):
        producer.send("t", i)
    wait_until(lambda: bounded.qsize() == MAXSIZE)
    with pytest.raises(BufferFullError, match="'t' is full"):
        producer.send("t", MAXSIZE)
    consumer: StreamConsumer[int] = StreamConsumer(QueueSubscriber(bounded))
    assert consumer.next(timeout=WAIT) == 0
    producer.send("t", MAXSIZE)  # room again: the producer goes on
    assert [consumer.next(timeout=WAIT) for _ in range(MAXSIZE)] == list(range(1, MAXSIZE + 1))
    with pytest.raises(StreamTimeoutError):
        consumer.next(timeout=0.1)


def test_bounded_queue_send_timeout_raises_buffer_full() -> None:
    q: queue.Queue[bytes] = queue.Queue(maxsize=MAXSIZE)
    producer: StreamProducer[int] = StreamProducer(
        QueuePublisher({"t": q}, block=True, timeout=0.2)
    )
    for i in range(MAXSIZE):
        producer.send("t", i)
    with pytest.raises(BufferFullError):
        producer.send("t", MAXSIZE)
    assert q.qsize() == MAXSIZE


def test_async_bounded_queue_without_blocking_raises_buffer_full() -> None:
    q: queue.Queue[bytes] = queue.Queue(maxsize=MAXSIZE)

    async def main() -> None:
        publisher = AsyncQueuePublisher({"t": q}, block=False)
        for i in range(MAXSIZE):
            await publisher.send("t", b"%d" % i)
        with pytest.raises(BufferFullError):
            await publisher.send("t", b"one too many")

    asyncio.run(asyncio.wait_for(main(), WAIT))
    assert [q.get_nowait() for _ in range(q.qsize())] == [b"%d" % i for i in range(MAXSIZE)]


def test_local_block_policy_makes_the_producer_wait() -> None:
    broker = LocalBroker()
    subscriber = LocalSubscriber(broker, "t", maxsize=MAXSIZE, policy="block")
    producer: StreamProducer[int] = StreamProducer(LocalPublisher(broker))
    sender = Sender(producer, COUNT, close=True)
    wait_until(lambda: sender.returned == MAXSIZE)
    sender.thread.join(0.3)
    assert sender.thread.is_alive()
    assert sender.returned == MAXSIZE
    received = list(StreamConsumer(subscriber, timeout=WAIT))
    sender.join()
    assert received == list(range(COUNT))
    assert subscriber.dropped == 0


def test_local_leaky_policy_keeps_the_newest_and_never_waits() -> None:
    broker = LocalBroker()
    leaky = LocalSubscriber(broker, "t", maxsize=MAXSIZE, policy="leaky")
    # A send would wait for a full block-policy subscriber; there is none, so
    # the whole stream goes out from this thread with nobody reading.
    producer: StreamProducer[int] = StreamProducer(LocalPublisher(broker, timeout=0))
    for i in range(COUNT):
        producer.send("t", i)
    producer.close_topics("t")
    # COUNT objects + 1 end-of-stream message; the newest MAXSIZE were kept.
    assert leaky.dropped == COUNT + 1 - MAXSIZE
    received = list(StreamConsumer(leaky, timeout=WAIT))
    assert received == list(range(COUNT - MAXSIZE + 1, COUNT))


def test_local_leaky_and_block_subscribers_side_by_side() -> None:
    broker = LocalBroker()
    leaky = LocalSubscriber(broker, "t", maxsize=MAXSIZE, policy="leaky")
    blocking = LocalSubscriber(broker, "t", maxsize=MAXSIZE, policy="block")
    sender = Sender(StreamProducer(LocalPublisher(broker)), COUNT, close=True)
    received = list(StreamConsumer(blocking, timeout=WAIT))
    sender.join()
    assert received == list(range(COUNT)), "the block subscriber misses nothing"
    kept = list(StreamConsumer(leaky, timeout=WAIT))
    assert leaky.dropped == COUNT + 1 - MAXSIZE
    assert kept == list(range(COUNT - MAXSIZE + 1, COUNT))


def _rss_kb() -> int:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_zeromq_publisher_drops_at_hwm_and_stays_bounded() -> None:
    pytest.importorskip("zmq")
    from proxystore_stream.shims.zmq import ZeroMQPublisher
    from proxystore_stream.shims.zmq import ZeroMQSubscriber

    count, size, hwm = 20_000, 10 * 1024, 50  # 200 MB offered to a reader that does not read
    with (
        ZeroMQPublisher("127.0.0.1", 0, sndhwm=hwm) as publisher,
        ZeroMQSubscriber(publisher.endpoint, topic="t", rcvhwm=hwm) as subscriber,
    ):
        publisher.wait_for_subscribers("t")
        body = b"x" * size
        producer: StreamProducer[bytes] = StreamProducer(publisher)
        before = _rss_kb()
        for i in range(count):
            producer.send("t", body, metadata={"i": i})  # never blocks
        grown_kb = _rss_kb() - before
        consumer: StreamConsumer[bytes] = StreamConsumer(subscriber)
        numbers = []
        while True:
            try:
                metadata, obj = consumer.next_with_metadata(timeout=1.0)
            except StreamTimeoutError:
                break
            assert obj == body
            numbers.append(metadata["i"])
            assert len(numbers) <= count
    assert grown_kb < 64 * 1024, f"the producer grew by {grown_kb} KiB"
    assert 0 < len(numbers) < count // 2, "most messages were dropped at the HWM"
    assert numbers == sorted(set(numbers)), "what arrives is in order, without duplicates"
    assert numbers[0] == 0, "the oldest are kept; newer ones are dropped"
