"""What is specific to the in-process LocalBroker shim (the conformance suite covers the rest)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import pytest

from proxystore_stream.exceptions import BufferFullError
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.shims.local import AsyncLocalPublisher
from proxystore_stream.shims.local import AsyncLocalSubscriber
from proxystore_stream.shims.local import LocalBroker
from proxystore_stream.shims.local import LocalPublisher
from proxystore_stream.shims.local import LocalSubscriber

JOIN_TIMEOUT = 30.0


def start(target: Callable[..., Any], *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def join_all(threads: Sequence[threading.Thread]) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread did not finish in time"


def drain(sub: LocalSubscriber, n: int, out: list[bytes]) -> None:
    for _ in range(n):
        out.append(sub.receive(JOIN_TIMEOUT))


def by_publisher(messages: list[bytes]) -> dict[bytes, list[int]]:
    """Group b"<pub>:<topic>:<i>" messages by (pub, topic), keeping arrival order."""
    grouped: dict[bytes, list[int]] = {}
    for message in messages:
        pub, topic, i = message.split(b":")
        grouped.setdefault(pub + b":" + topic, []).append(int(i))
    return grouped


def test_n_to_n_fanout_every_subscriber_gets_its_topics_in_publisher_order() -> None:
    broker = LocalBroker()
    n = 300
    # Small buffers, so publishers also wait on slow subscribers along the way.
    subs = {
        "a": LocalSubscriber(broker, "a", maxsize=8),
        "b": LocalSubscriber(broker, ["b"], maxsize=8),
        "ab": LocalSubscriber(broker, ["a", "b"], maxsize=8),
    }
    pubs = [LocalPublisher(broker, timeout=JOIN_TIMEOUT) for _ in range(2)]

    def produce(index: int) -> None:
        for i in range(n):
            for topic in ("a", "b"):
                pubs[index].send(topic, b"p%d:%s:%d" % (index, topic.encode(), i))

    received: dict[str, list[bytes]] = {name: [] for name in subs}
    consumers = [start(drain, subs[name], n * 2 * len(name), received[name]) for name in subs]
    join_all([start(produce, 0), start(produce, 1), *consumers])

    expected_order = list(range(n))
    for name, messages in received.items():
        grouped = by_publisher(messages)
        expected_keys = {b"p%d:%s" % (p, t.encode()) for p in range(2) for t in name}
        assert set(grouped) == expected_keys, name
        for key, order in grouped.items():
            assert order == expected_order, f"{name} got {key!r} out of order"
        with pytest.raises(StreamTimeoutError):
            subs[name].receive(0)


def test_send_to_topic_without_subscribers_is_dropped() -> None:
    broker = LocalBroker()
    pub = LocalPublisher(broker)
    pub.send("t", b"lost")
    sub = LocalSubscriber(broker, "t")
    pub.send("t", b"kept")
    assert sub.receive(1) == b"kept"
    with pytest.raises(StreamTimeoutError):
        sub.receive(0.05)


def test_topics_exist_while_subscribed_and_duplicates_count_once() -> None:
    broker = LocalBroker()
    sub = LocalSubscriber(broker, ["x", "y", "x"])
    assert broker.topics() == ["x", "y"]
    assert broker.subscriber_count("x") == 1
    LocalPublisher(broker).send("x", b"once")
    assert sub.receive(1) == b"once"
    with pytest.raises(StreamTimeoutError):
        sub.receive(0)
    sub.close()
    assert broker.topics() == []
    assert broker.subscriber_count("x") == 0


def test_brokers_are_independent() -> None:
    first, second = LocalBroker(), LocalBroker()
    sub = LocalSubscriber(first, "t")
    LocalPublisher(second).send("t", b"other broker")
    with pytest.raises(StreamTimeoutError):
        sub.receive(0.05)


def test_leaky_keeps_newest_maxsize_and_counts_drops() -> None:
    broker = LocalBroker()
    leaky = LocalSubscriber(broker, "t", maxsize=5, policy="leaky")
    pub = LocalPublisher(broker, timeout=0)
    for i in range(12):
        pub.send("t", b"%d" % i)  # never waits nor raises for a leaky subscriber
    assert leaky.dropped == 7
    assert [leaky.receive(0) for _ in range(5)] == [b"%d" % i for i in range(7, 12)]
    with pytest.raises(StreamTimeoutError):
        leaky.receive(0)
    pub.send("t", b"12")
    assert leaky.receive(0) == b"12"
    assert leaky.dropped == 7


def test_block_policy_makes_publisher_wait_until_room() -> None:
    broker = LocalBroker()
    sub = LocalSubscriber(broker, "t", maxsize=2)
    pub = LocalPublisher(broker)
    sent = threading.Event()

    def produce() -> None:
        for i in range(3):
            pub.send("t", b"%d" % i)
        sent.set()

    thread = start(produce)
    assert not sent.wait(0.3), "third send must wait while the buffer is full"
    assert sub.receive(1) == b"0"
    assert sent.wait(5), "send did not resume once there was room"
    assert [sub.receive(1), sub.receive(1)] == [b"1", b"2"]
    join_all([thread])


def test_send_timeout_raises_buffer_full_and_others_still_get_it() -> None:
    broker = LocalBroker()
    full = LocalSubscriber(broker, "t", maxsize=1)
    roomy = LocalSubscriber(broker, "t", maxsize=10)
    leaky = LocalSubscriber(broker, "t", maxsize=1, policy="leaky")
    pub = LocalPublisher(broker, timeout=0.2)
    pub.send("t", b"first")
    start_time = time.monotonic()
    with pytest.raises(BufferFullError, match="1 of 3 subscribers of topic 't'"):
        pub.send("t", b"second")
    elapsed = time.monotonic() - start_time
    assert 0.15 <= elapsed < 5
    assert full.receive(0) == b"first"
    with pytest.raises(StreamTimeoutError):
        full.receive(0)
    assert [roomy.receive(0), roomy.receive(0)] == [b"first", b"second"]
    assert leaky.receive(0) == b"second"
    assert leaky.dropped == 1


def test_zero_timeout_never_waits() -> None:
    broker = LocalBroker()
    LocalSubscriber(broker, "t", maxsize=1)
    pub = LocalPublisher(broker, timeout=0)
    pub.send("t", b"fits")
    start_time = time.monotonic()
    with pytest.raises(BufferFullError):
        pub.send("t", b"does not")
    assert time.monotonic() - start_time < 0.1


def test_close_releases_blocked_publisher_and_receiver() -> None:
    broker = LocalBroker()
    sub = LocalSubscriber(broker, "t", maxsize=1)
    pub = LocalPublisher(broker)
    pub.send("t", b"fills the buffer")
    outcome: list[object] = []

    def produce() -> None:
        try:
            pub.send("t", b"waits")
            outcome.append("returned")
        except Exception as exc:  # pragma: no cover - reported below
            outcome.append(exc)

    thread = start(produce)
    thread.join(0.2)
    assert thread.is_alive(), "send must be waiting for room"
    sub.close()
    thread.join(1.0)
    assert not thread.is_alive(), "close() did not release the waiting publisher"
    assert outcome == ["returned"]
    assert broker.subscriber_count("t") == 0
    with pytest.raises(SubscriberClosedError):
        sub.receive(0)


def test_close_from_another_thread_wakes_receive_at_once() -> None:
    broker = LocalBroker()
    sub = LocalSubscriber(broker, "t")
    errors: list[BaseException] = []
    waiting = threading.Event()

    def consume() -> None:
        waiting.set()
        try:
            sub.receive()
        except BaseException as exc:
            errors.append(exc)

    thread = start(consume)
    assert waiting.wait(5)
    thread.join(0.1)
    start_time = time.monotonic()
    sub.close()
    thread.join(5)
    assert time.monotonic() - start_time < 0.5
    assert len(errors) == 1
    assert isinstance(errors[0], SubscriberClosedError)


def test_publisher_close_is_idempotent_and_refuses_sends() -> None:
    broker = LocalBroker()
    with LocalPublisher(broker) as pub:
        pass
    pub.close()
    with pytest.raises(PublisherClosedError, match="closed"):
        pub.send("t", b"x")


def test_bytearray_is_copied_on_send() -> None:
    broker = LocalBroker()
    sub = LocalSubscriber(broker, "t")
    data = bytearray(b"abc")
    LocalPublisher(broker).send("t", data)
    data[0:1] = b"z"
    assert sub.receive(0) == b"abc"


@pytest.mark.parametrize(
    ("make", "error", "name"),
    [
        (lambda b: LocalSubscriber(b, []), ValueError, "topics"),
        (lambda b: LocalSubscriber(b, [1]), TypeError, "topics"),
        (lambda b: LocalSubscriber(b, "t", maxsize=0), ValueError, "maxsize"),
        (lambda b: LocalSubscriber(b, "t", maxsize=1.5), TypeError, "maxsize"),
        (lambda b: LocalSubscriber(b, "t", policy="drop"), ValueError, "policy"),
        (lambda b: LocalSubscriber(object(), "t"), TypeError, "broker"),
        (lambda b: LocalPublisher(b, timeout=-1), ValueError, "timeout"),
        (lambda b: LocalPublisher(b, timeout="1"), TypeError, "timeout"),
        (lambda b: LocalPublisher(b).send(b"t", b"x"), TypeError, "topic"),
        (lambda b: LocalPublisher(b).send("t", "text"), TypeError, "message"),
        (lambda b: LocalSubscriber(b, "t").receive(-1), ValueError, "timeout"),
    ],
)
def test_bad_arguments_name_the_parameter(
    make: Callable[[LocalBroker], Any],
    error: type[Exception],
    name: str,
) -> None:
    with pytest.raises(error, match=name):
        make(LocalBroker())


def test_thread_safety_many_publisher_threads_exact_counts() -> None:
    broker = LocalBroker()
    threads_n, per_thread = 8, 2000
    subs = [LocalSubscriber(broker, "t", maxsize=64) for _ in range(2)]
    pubs = [LocalPublisher(broker, timeout=JOIN_TIMEOUT) for _ in range(threads_n)]

    def produce(index: int) -> None:
        for i in range(per_thread):
            pubs[index].send("t", b"p%d:t:%d" % (index, i))

    received: list[list[bytes]] = [[], []]
    total = threads_n * per_thread
    consumers = [start(drain, sub, total, out) for sub, out in zip(subs, received, strict=True)]
    join_all([*(start(produce, i) for i in range(threads_n)), *consumers])

    for sub, messages in zip(subs, received, strict=True):
        assert len(messages) == total
        assert len(set(messages)) == total
        grouped = by_publisher(messages)
        assert len(grouped) == threads_n
        assert all(order == list(range(per_thread)) for order in grouped.values())
        with pytest.raises(StreamTimeoutError):
            sub.receive(0)
        assert sub.dropped == 0


def test_sync_publisher_thread_feeds_async_subscriber() -> None:
    broker = LocalBroker()
    n = 3000

    async def main() -> list[bytes]:
        # A small buffer, so the publisher thread also waits for the async side.
        sub = AsyncLocalSubscriber(broker, "t", maxsize=16)
        pub = LocalPublisher(broker, timeout=JOIN_TIMEOUT)
        thread = start(lambda: [pub.send("t", b"%d" % i) for i in range(n)])
        try:
            return [await sub.receive(JOIN_TIMEOUT) for _ in range(n)]
        finally:
            await asyncio.to_thread(join_all, [thread])
            await sub.close()

    assert asyncio.run(main()) == [b"%d" % i for i in range(n)]


def test_async_publisher_waits_for_sync_subscriber_thread() -> None:
    broker = LocalBroker()
    n = 2000
    sub = LocalSubscriber(broker, "t", maxsize=4)
    received: list[bytes] = []
    consumer = start(drain, sub, n, received)

    async def main() -> None:
        async with AsyncLocalPublisher(broker, timeout=JOIN_TIMEOUT) as pub:
            for i in range(n):
                await pub.send("t", b"%d" % i)

    asyncio.run(main())
    join_all([consumer])
    assert received == [b"%d" % i for i in range(n)]


def test_async_publisher_send_timeout_raises_buffer_full() -> None:
    async def main() -> None:
        broker = LocalBroker()
        sub = AsyncLocalSubscriber(broker, "t", maxsize=1)
        pub = AsyncLocalPublisher(broker, timeout=0.2)
        await pub.send("t", b"first")
        with pytest.raises(BufferFullError):
            await pub.send("t", b"second")
        assert await sub.receive(0) == b"first"
        with pytest.raises(StreamTimeoutError):
            await sub.receive(0.05)

    asyncio.run(main())


def test_cancelled_async_receive_loses_no_message() -> None:
    broker = LocalBroker()
    n = 300

    async def main() -> tuple[list[bytes], int]:
        sub = AsyncLocalSubscriber(broker, "t")
        pub = LocalPublisher(broker)
        got: list[bytes] = []
        cancelled = 0
        for i in range(n):
            task = asyncio.ensure_future(sub.receive(5))
            # Let the receive park its waiter, then race a send from a thread
            # against the cancel.
            await asyncio.sleep(0)
            sender = start(pub.send, "t", b"%d" % i)
            if i % 2:
                await asyncio.sleep(0)
            task.cancel()
            try:
                got.append(await task)
            except asyncio.CancelledError:
                cancelled += 1
            await asyncio.to_thread(join_all, [sender])
        while True:
            try:
                got.append(await sub.receive(0))
            except StreamTimeoutError:
                break
        await sub.close()
        return got, cancelled

    got, cancelled = asyncio.run(main())
    assert got == [b"%d" % i for i in range(n)]
    assert cancelled > 0


def test_cancelled_receive_passes_wakeup_to_another_waiter() -> None:
    async def main() -> bytes:
        broker = LocalBroker()
        sub = AsyncLocalSubscriber(broker, "t")
        # No timeouts: only the handed-on wake-up can finish `second`.
        first = asyncio.ensure_future(sub.receive())
        second = asyncio.ensure_future(sub.receive())
        await asyncio.sleep(0)
        LocalPublisher(broker).send("t", b"only")  # wakes `first`
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await asyncio.wait_for(second, 2)

    assert asyncio.run(main()) == b"only"


def test_async_close_wakes_receive_and_ends_iteration() -> None:
    async def main() -> None:
        broker = LocalBroker()
        sub = AsyncLocalSubscriber(broker, ["t"])
        task = asyncio.ensure_future(sub.receive())
        await asyncio.sleep(0)
        await sub.close()
        with pytest.raises(SubscriberClosedError):
            await asyncio.wait_for(task, 1)
        assert [m async for m in sub] == []
        await sub.close()

    asyncio.run(main())


def test_async_leaky_subscriber_counts_drops() -> None:
    async def main() -> tuple[list[bytes], int]:
        broker = LocalBroker()
        sub = AsyncLocalSubscriber(broker, "t", maxsize=3, policy="leaky")
        pub = AsyncLocalPublisher(broker, timeout=0)
        for i in range(10):
            await pub.send("t", b"%d" % i)
        return [await sub.receive(0) for _ in range(3)], sub.dropped

    assert asyncio.run(main()) == ([b"7", b"8", b"9"], 7)


def test_async_receive_timeout() -> None:
    async def main() -> float:
        sub = AsyncLocalSubscriber(LocalBroker(), "t")
        start_time = time.monotonic()
        with pytest.raises(StreamTimeoutError):
            await sub.receive(0.2)
        return time.monotonic() - start_time

    assert 0.15 <= asyncio.run(main()) < 5
