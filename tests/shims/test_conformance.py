"""The conformance suite: every shim, sync and async, passes the same tests."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from tests.shims.cases import ShimCase
from tests.shims.cases import ShimFactory
from tests.shims.drivers import AsyncDriver
from tests.shims.drivers import Driver
from tests.shims.drivers import SyncDriver

SIZES = [1, 100, 10 * 1024, 1024 * 1024, 10 * 1024 * 1024]
RECEIVE_TIMEOUT = 15.0


@pytest.fixture(params=["sync", "async"])
def driver(
    request: pytest.FixtureRequest,
    case: ShimCase,
    factory: ShimFactory,
) -> Iterator[Driver]:
    if request.param == "async" and not case.has_async:
        pytest.skip(f"{case.name} has no async twin yet")
    made: Driver = SyncDriver(factory) if request.param == "sync" else AsyncDriver(factory)
    try:
        yield made
    finally:
        made.shutdown()


def topic_name() -> str:
    return f"pss-test-{uuid.uuid4().hex[:12]}"


def payload(i: int, size: int) -> bytes:
    head = i.to_bytes(4, "big")
    return (head * (size // 4 + 1))[:size] if size >= 4 else head[-size:]


def receive_n(driver: Driver, sub: object, n: int) -> list[bytes]:
    return [driver.receive(sub, RECEIVE_TIMEOUT) for _ in range(n)]


def test_round_trip_sizes_in_order(driver: Driver) -> None:
    topic = topic_name()
    pub = driver.publisher()
    sub = driver.subscriber([topic])
    sent = [payload(i, size) for i, size in enumerate(SIZES)]
    for message in sent:
        driver.send(pub, topic, message)
    driver.flush(pub)
    received = receive_n(driver, sub, len(sent))
    assert [len(m) for m in received] == SIZES
    assert received == sent


def test_many_messages_arrive_in_order(driver: Driver) -> None:
    topic = topic_name()
    pub = driver.publisher()
    sub = driver.subscriber([topic])
    sent = [b"m%06d" % i for i in range(3000)]
    for message in sent:
        driver.send(pub, topic, message)
    driver.flush(pub)
    assert receive_n(driver, sub, len(sent)) == sent


def test_subscriber_gets_only_its_topics(case: ShimCase, driver: Driver) -> None:
    base = topic_name()
    # "base" must not match "base-longer" even where the broker matches prefixes.
    mine, other = base, base + "-longer"
    pub = driver.publisher()
    sub = driver.subscriber([mine])
    driver.send(pub, other, b"not for me")
    driver.send(pub, mine, b"for me 1")
    driver.send(pub, other, b"not for me either")
    driver.send(pub, mine, b"for me 2")
    driver.flush(pub)
    assert receive_n(driver, sub, 2) == [b"for me 1", b"for me 2"]
    with pytest.raises(StreamTimeoutError):
        driver.receive(sub, 0.5)


def test_one_subscriber_several_topics(case: ShimCase, driver: Driver) -> None:
    if not case.multi_topic:
        pytest.skip(f"{case.name} subscribers read one topic")
    first, second = topic_name(), topic_name()
    pub = driver.publisher()
    sub = driver.subscriber([first, second])
    sent = {b"a%d" % i for i in range(10)} | {b"b%d" % i for i in range(10)}
    for i in range(10):
        driver.send(pub, first, b"a%d" % i)
        driver.send(pub, second, b"b%d" % i)
    driver.flush(pub)
    received = receive_n(driver, sub, 20)
    assert set(received) == sent
    # Order holds within each topic.
    assert [m for m in received if m.startswith(b"a")] == [b"a%d" % i for i in range(10)]


@pytest.fixture
def async_driver(case: ShimCase, factory: ShimFactory) -> Iterator[AsyncDriver]:
    if not case.has_async:
        pytest.skip(f"{case.name} has no async twin yet")
    made = AsyncDriver(factory)
    try:
        yield made
    finally:
        made.shutdown()


def test_receive_ready_interleaves_with_receive(case: ShimCase, async_driver: AsyncDriver) -> None:
    """An async subscriber's receive_ready() hands over what receive() would, never waiting."""
    driver = async_driver
    topic = topic_name()
    pub = driver.publisher()
    sub = driver.subscriber([topic])
    if not hasattr(sub, "receive_ready"):
        pytest.skip(f"{case.name}'s async subscriber has no receive_ready")
    assert sub.receive_ready() is None  # nothing sent yet
    sent = [payload(i, 100 if i % 3 else 10 * 1024) for i in range(300)]
    for message in sent:
        driver.send(pub, topic, message)
    driver.flush(pub)
    received: list[bytes] = []
    ready = 0
    while len(received) < len(sent):  # bounded: each turn takes one message or times out
        message = sub.receive_ready()
        if message is None:
            message = driver.receive(sub, RECEIVE_TIMEOUT)
        else:
            ready += 1
        received.append(message)
    assert received == sent
    assert ready > 0, "a busy subscriber had nothing ready once"
    assert sub.receive_ready() is None  # all taken
    driver.send(pub, topic, b"after close")
    driver.flush(pub)
    driver.close(sub)
    started = time.monotonic()
    assert sub.receive_ready() is None
    assert time.monotonic() - started < 0.5
    with pytest.raises(SubscriberClosedError):
        driver.receive(sub, 1.0)


def test_fanout_or_work_queue_semantics(case: ShimCase, driver: Driver) -> None:
    topic = topic_name()
    pub = driver.publisher()
    subs = [driver.subscriber([topic]), driver.subscriber([topic])]
    sent = [b"w%04d" % i for i in range(200)]
    for message in sent:
        driver.send(pub, topic, message)
    driver.flush(pub)
    if case.fanout:
        for sub in subs:
            assert receive_n(driver, sub, len(sent)) == sent
        return
    received: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline:
        for sub in subs:
            try:
                received.append(driver.receive(sub, 0.05))
                driver.ack(sub)
            except StreamTimeoutError:
                pass
    assert sorted(received) == sent, "each message must go to exactly one subscriber"


def test_persistence_while_no_subscriber(case: ShimCase, driver: Driver) -> None:
    if not case.persistent:
        pytest.skip(f"{case.name} does not keep messages for absent subscribers")
    topic = topic_name()
    pub = driver.publisher()
    sent = [b"early-%d" % i for i in range(5)]
    for message in sent:
        driver.send(pub, topic, message)
    driver.flush(pub)
    sub = driver.subscriber([topic])
    assert receive_n(driver, sub, len(sent)) == sent


def test_receive_times_out(driver: Driver) -> None:
    sub = driver.subscriber([topic_name()])
    start = time.monotonic()
    with pytest.raises(StreamTimeoutError):
        driver.receive(sub, 0.3)
    assert time.monotonic() - start < 10


def test_close_is_idempotent_and_ends_iteration(driver: Driver) -> None:
    topic = topic_name()
    pub = driver.publisher()
    sub = driver.subscriber([topic])
    driver.close(sub)
    driver.close(sub)
    driver.close(pub)
    driver.close(pub)
    with pytest.raises(SubscriberClosedError):
        driver.receive(sub, 1.0)
    assert driver.iterate(sub) == []


def test_send_after_close_raises_publisher_closed(driver: Driver) -> None:
    topic = topic_name()
    pub = driver.publisher()
    sub = driver.subscriber([topic])
    driver.send(pub, topic, b"before close")
    driver.flush(pub)
    assert driver.receive(sub, RECEIVE_TIMEOUT) == b"before close"
    driver.close(pub)
    with pytest.raises(PublisherClosedError, match="closed"):
        driver.send(pub, topic, b"after close")
    driver.close(pub)  # still idempotent after the refused send


def test_close_from_another_thread_ends_blocked_iteration(factory: ShimFactory) -> None:
    factory.publisher()
    sub = factory.subscriber([topic_name()])
    received: list[bytes] = []
    done = threading.Event()

    def consume() -> None:
        received.extend(sub)
        done.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.2)  # let the consumer block in its receive
    sub.close()
    assert done.wait(10), "iteration did not end after close()"
    assert received == []


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_close_releases_sockets(driver: Driver) -> None:
    # Warm up: client libraries open some process-wide resources once.
    topic = topic_name()
    for _ in range(2):
        driver.close(driver.subscriber([topic]))
        driver.close(driver.publisher())
    before = _open_fds()
    for _ in range(5):
        pub = driver.publisher()
        sub = driver.subscriber([topic])
        driver.close(sub)
        driver.close(pub)
    assert _open_fds() - before < 5


def test_unreachable_broker_raises_connection_error(case: ShimCase) -> None:
    if case.unreachable_publisher is None and case.unreachable_subscriber is None:
        pytest.skip(f"{case.name} has no broker to be unreachable")
    for attempt in (case.unreachable_publisher, case.unreachable_subscriber):
        if attempt is None:
            continue
        start = time.monotonic()
        with pytest.raises(BrokerConnectionError) as info:
            attempt()
        assert isinstance(info.value, ConnectionError)
        assert time.monotonic() - start < 30


def test_stream_producer_consumer_end_to_end(driver: Driver, tmp_path: Path) -> None:
    from proxystore_stream import AsyncStreamConsumer
    from proxystore_stream import AsyncStreamProducer
    from proxystore_stream import StreamConsumer
    from proxystore_stream import StreamProducer
    from proxystore_stream.proxy import Proxy
    from proxystore_stream.store import FileConnector
    from proxystore_stream.store import Store

    topic = topic_name()
    store: Store[Any] = Store("conformance", FileConnector(tmp_path))
    pub = driver.publisher()
    sub = driver.subscriber([topic])
    objects = [{"i": i, "blob": bytes([i]) * (10 if i % 2 else 100_000)} for i in range(20)]

    if isinstance(driver, SyncDriver):
        producer: Any = StreamProducer(
            pub, stores={topic: store}, inline_threshold=1024, batch_size=3
        )
        for i, obj in enumerate(objects):
            producer.send(topic, obj, metadata={"i": i})
        producer.close(topics=[topic], publisher=False)
        received = list(StreamConsumer(sub, timeout=RECEIVE_TIMEOUT).iter_with_metadata())
    else:

        async def run() -> list[Any]:
            producer = AsyncStreamProducer(
                pub, stores={topic: store}, inline_threshold=1024, batch_size=3
            )
            for i, obj in enumerate(objects):
                await producer.send(topic, obj, metadata={"i": i})
            await producer.close(topics=[topic], publisher=False)
            consumer = AsyncStreamConsumer(sub, timeout=RECEIVE_TIMEOUT)
            return [item async for item in consumer.iter_with_metadata()]

        received = driver.run(run())

    assert [metadata["i"] for metadata, _ in received] == list(range(20))
    assert [obj for _, obj in received] == objects
    assert [isinstance(obj, Proxy) for _, obj in received] == [i % 2 == 0 for i in range(20)]
    assert list(tmp_path.iterdir()) == [], "every stored object was evicted on resolve"
