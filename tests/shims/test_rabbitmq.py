"""What is specific to the RabbitMQ shim (the shared contract is in test_conformance)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import pika
import pytest

from proxystore_stream.cli.targets.rabbitmq import open_bare
from proxystore_stream.cli.targets.rabbitmq import open_endpoints
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import BufferFullError
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.protocols import Acknowledging
from proxystore_stream.protocols import AsyncAcknowledging
from proxystore_stream.protocols import AsyncFlushable
from proxystore_stream.protocols import AsyncReceivingSubscriber
from proxystore_stream.protocols import Flushable
from proxystore_stream.protocols import ReceivingSubscriber
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims.rabbitmq import DEFAULT_MAX_MESSAGE_SIZE
from proxystore_stream.shims.rabbitmq import DEFAULT_PREFIX
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQPublisher
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQSubscriber
from proxystore_stream.shims.rabbitmq import RabbitMQPublisher
from proxystore_stream.shims.rabbitmq import RabbitMQSubscriber
from tests.conftest import free_port
from tests.conftest import require_broker
from tests.shims.cases_rabbitmq import HOST
from tests.shims.cases_rabbitmq import PORT
from tests.shims.cases_rabbitmq import QUEUE_ARGUMENTS
from tests.shims.cases_rabbitmq import delete_broker_objects

URL = f"amqp://guest:guest@{HOST}:{PORT}/%2F"
Q = {"host": HOST, "port": PORT, "mode": "queue", "queue_arguments": QUEUE_ARGUMENTS}
F = {"host": HOST, "port": PORT, "mode": "fanout"}


@pytest.fixture
def topics() -> Iterator[list[str]]:
    """Unique topic names; their queues and exchanges are deleted afterwards."""
    require_broker("RabbitMQ", HOST, PORT)
    names = [f"pss-test-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    yield names
    objects = {DEFAULT_PREFIX + n for n in names}
    objects |= {o + "-bare" for o in objects}
    delete_broker_objects("queue", objects)
    delete_broker_objects("fanout", objects)


def receive_all(sub: RabbitMQSubscriber, n: int) -> list[bytes]:
    return [sub.receive(10) for _ in range(n)]


def test_classes_have_the_optional_capabilities(topics: list[str]) -> None:
    with RabbitMQPublisher(**Q) as pub, RabbitMQSubscriber(topics[0], **Q) as sub:
        assert isinstance(pub, Flushable)
        assert isinstance(sub, ReceivingSubscriber)
        assert isinstance(sub, Acknowledging)
    assert isinstance(AsyncRabbitMQPublisher(), AsyncFlushable)
    async_sub = AsyncRabbitMQSubscriber("x")
    assert isinstance(async_sub, AsyncReceivingSubscriber)
    assert isinstance(async_sub, AsyncAcknowledging)


def test_work_queue_keeps_persistent_messages_without_consumer(
    topics: list[str],
) -> None:
    topic = topics[0]
    with RabbitMQPublisher(**Q) as pub:
        for i in range(3):
            pub.send(topic, b"kept-%d" % i)
    # Nobody consumed yet: the broker holds them, persistent.
    connection = pika.BlockingConnection(pika.ConnectionParameters(HOST, PORT))
    try:
        channel = connection.channel()
        declared = channel.queue_declare(
            DEFAULT_PREFIX + topic,
            durable=True,
            passive=True,
        )
        assert declared.method.message_count == 3
        method, properties, body = channel.basic_get(DEFAULT_PREFIX + topic)
        assert body == b"kept-0"
        assert properties.delivery_mode == 2
        channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()
    with RabbitMQSubscriber(topic, **Q) as sub:
        assert receive_all(sub, 3) == [b"kept-0", b"kept-1", b"kept-2"]


def test_unacked_message_is_redelivered_after_close(topics: list[str]) -> None:
    topic = topics[0]
    with RabbitMQPublisher(**Q) as pub:
        for i in range(5):
            pub.send(topic, b"job-%d" % i)
    first = RabbitMQSubscriber(topic, **Q)
    # Receiving job-1 acks job-0; job-1 itself is never acked.
    assert receive_all(first, 2) == [b"job-0", b"job-1"]
    first.close()
    with RabbitMQSubscriber(topic, **Q) as second:
        assert receive_all(second, 4) == [b"job-1", b"job-2", b"job-3", b"job-4"]
        with pytest.raises(StreamTimeoutError):
            second.receive(0.3)


def test_explicit_ack_is_not_redelivered(topics: list[str]) -> None:
    topic = topics[0]
    with RabbitMQPublisher(**Q) as pub:
        for i in range(3):
            pub.send(topic, b"job-%d" % i)
    with RabbitMQSubscriber(topic, **Q) as first:
        assert receive_all(first, 2) == [b"job-0", b"job-1"]
        first.ack()
    with RabbitMQSubscriber(topic, **Q) as second:
        assert receive_all(second, 1) == [b"job-2"]
        with pytest.raises(StreamTimeoutError):
            second.receive(0.3)


def test_prefetch_is_honoured(topics: list[str]) -> None:
    topic = topics[0]
    sent = [b"p%d" % i for i in range(10)]
    with (
        RabbitMQSubscriber(topic, prefetch=3, **Q) as holder,
        RabbitMQPublisher(**Q) as pub,
    ):
        for message in sent:
            pub.send(topic, message)
        pub.flush()
        assert holder.receive(10) == b"p0"
        # holder may hold 3 unacked (p0 handed, p1-p2 prefetched); the rest
        # stays in the queue for the next consumer.
        with RabbitMQSubscriber(topic, prefetch=100, **Q) as other:
            assert receive_all(other, 7) == sent[3:]
            with pytest.raises(StreamTimeoutError):
                other.receive(0.3)
            other.ack()
        assert receive_all(holder, 2) == [b"p1", b"p2"]
        holder.ack()


def test_fanout_two_subscribers_several_topics(topics: list[str]) -> None:
    a, b, c = topics
    with (
        RabbitMQPublisher(**F) as pub,
        RabbitMQSubscriber([a, b], **F) as first,
        RabbitMQSubscriber([b, c], **F) as second,
    ):
        for i in range(5):
            for topic in (a, b, c):
                pub.send(topic, f"{topic[-4:]}:{i}".encode())
        pub.flush()
        got_first = receive_all(first, 10)
        got_second = receive_all(second, 10)
        for sub in (first, second):
            with pytest.raises(StreamTimeoutError):
                sub.receive(0.3)

    def of(topic: str, got: list[bytes]) -> list[bytes]:
        return [m for m in got if m.startswith(topic[-4:].encode())]

    expected = {t: [f"{t[-4:]}:{i}".encode() for i in range(5)] for t in topics}
    assert of(a, got_first) == expected[a]
    assert of(b, got_first) == expected[b]
    assert of(b, got_second) == expected[b]
    assert of(c, got_second) == expected[c]
    assert of(c, got_first) == []
    assert of(a, got_second) == []


def test_credentials_via_url(topics: list[str]) -> None:
    topic = topics[0]
    with RabbitMQPublisher(url=URL) as pub, RabbitMQSubscriber(topic, url=URL) as sub:
        pub.send(topic, b"hello")
        assert sub.receive(10) == b"hello"
    bad = URL.replace("guest:guest", "guest:wrong-password")
    start = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="ACCESS_REFUSED") as info:
        RabbitMQPublisher(url=bad)
    assert info.value.broker == f"amqp://{HOST}:{PORT}/%2F"
    assert time.monotonic() - start < 10


def test_credentials_via_parameters_reach_the_async_twin(topics: list[str]) -> None:
    good = pika.ConnectionParameters(
        HOST,
        PORT,
        credentials=pika.PlainCredentials("guest", "guest"),
    )
    bad = pika.ConnectionParameters(
        HOST,
        PORT,
        credentials=pika.PlainCredentials("guest", "wrong-password"),
        socket_timeout=5,
    )

    async def main() -> bytes:
        async with (
            AsyncRabbitMQPublisher(good) as pub,
            AsyncRabbitMQSubscriber(topics[0], good) as sub,
        ):
            await pub.send(topics[0], b"async hello")
            with pytest.raises(BrokerConnectionError):
                await AsyncRabbitMQPublisher(bad).open()
            return await sub.receive(10)

    assert asyncio.run(main()) == b"async hello"


def test_oversized_message_raises_value_error(topics: list[str]) -> None:
    topic = topics[0]
    with (
        RabbitMQPublisher(max_message_size=1000, **F) as pub,
        RabbitMQSubscriber(topic, **F) as sub,
    ):
        with pytest.raises(ValueError, match="max_message_size"):
            pub.send(topic, b"x" * 1001)
        pub.send(topic, b"x" * 1000)  # the publisher is still usable
        assert sub.receive(10) == b"x" * 1000
    with (
        RabbitMQPublisher(**F) as pub,
        pytest.raises(ValueError, match=str(DEFAULT_MAX_MESSAGE_SIZE)),
    ):
        pub.send(topic, bytes(DEFAULT_MAX_MESSAGE_SIZE + 1))

    async def main() -> None:
        async with AsyncRabbitMQPublisher(max_message_size=10, **F) as pub:
            with pytest.raises(ValueError, match="max_message_size"):
                await pub.send(topic, b"x" * 11)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"mode": "topic"}, "mode"),
        ({"prefetch": -1}, "prefetch"),
        ({"prefix": "amq.x"}, "prefix"),
        ({"url": URL, "host": HOST}, "host"),
        ({"topics": "t" * 252}, "topics"),
        ({"topics": []}, "topics"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict[str, object], parameter: str) -> None:
    topics = kwargs.pop("topics", "ok")
    with pytest.raises(ValueError, match=parameter):
        RabbitMQSubscriber(topics, **kwargs)  # type: ignore[arg-type]


def test_long_topic_name_rejected_on_send(topics: list[str]) -> None:
    with RabbitMQPublisher(**F) as pub:
        pub.send("t" * (255 - len(DEFAULT_PREFIX)), b"fits")
        with pytest.raises(ValueError, match=r"topic .* 256 bytes"):
            pub.send("t" * (256 - len(DEFAULT_PREFIX)), b"too long a name")
    delete_broker_objects("fanout", {DEFAULT_PREFIX + "t" * (255 - len(DEFAULT_PREFIX))})


def test_close_from_other_thread_is_prompt(topics: list[str]) -> None:
    sub = RabbitMQSubscriber(topics[0], **Q)
    errors: list[BaseException] = []
    started = threading.Event()

    def block() -> None:
        started.set()
        try:
            sub.receive()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=block, daemon=True)
    thread.start()
    assert started.wait(5)
    time.sleep(0.2)  # let it enter the blocking receive
    start = time.monotonic()
    sub.close()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - start < 0.5
    assert [type(e) for e in errors] == [SubscriberClosedError]
    # The receiving thread closed the connection it owned.
    assert sub._connection.is_closed


def test_receive_slices_service_heartbeats(topics: list[str]) -> None:
    # heartbeat=1: without servicing, the broker drops the link after ~2-3 s.
    params = pika.ConnectionParameters(HOST, PORT, heartbeat=1)
    with (
        RabbitMQSubscriber(topics[0], params, mode="fanout") as sub,
        RabbitMQPublisher(**F) as pub,
    ):
        with pytest.raises(StreamTimeoutError):
            sub.receive(4.0)
        pub.send(topics[0], b"still connected")
        assert sub.receive(10) == b"still connected"


def test_unreachable_is_bounded_sync_and_async() -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="Cannot connect"):
        RabbitMQSubscriber("t", host=HOST, port=port)

    async def main() -> None:
        with pytest.raises(BrokerConnectionError):
            await AsyncRabbitMQSubscriber("t", host=HOST, port=port).open()

    asyncio.run(main())
    assert time.monotonic() - start < 10


def test_async_cancelled_receive_loses_nothing(topics: list[str]) -> None:
    topic = topics[0]

    async def main() -> list[bytes]:
        async with (
            AsyncRabbitMQPublisher(**Q) as pub,
            AsyncRabbitMQSubscriber(topic, **Q) as sub,
        ):
            for _ in range(20):
                task = asyncio.ensure_future(sub.receive())
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            got: list[bytes] = []
            for i in range(5):
                await pub.send(topic, b"c%d" % i)
                # Cancel a receive that may be racing the delivery: either it
                # returned the message, or the next receive must.
                task = asyncio.ensure_future(sub.receive())
                await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    got.append(await task)
            while len(got) < 5:
                got.append(await sub.receive(10))
            await sub.ack()
            return got

    assert asyncio.run(main()) == [b"c%d" % i for i in range(5)]


def test_async_work_queue_redelivers_unacked(topics: list[str]) -> None:
    topic = topics[0]

    async def main() -> list[bytes]:
        async with AsyncRabbitMQPublisher(confirm=True, **Q) as pub:
            for i in range(4):
                await pub.send(topic, b"a%d" % i)
            await pub.flush()
        async with AsyncRabbitMQSubscriber(topic, **Q) as first:
            assert [await first.receive(10) for _ in range(2)] == [b"a0", b"a1"]
        async with AsyncRabbitMQSubscriber(topic, **Q) as second:
            received = [await second.receive(10) for _ in range(3)]
            await second.ack()
            with pytest.raises(StreamTimeoutError):
                await second.receive(0.3)
            return received

    assert asyncio.run(main()) == [b"a1", b"a2", b"a3"]


def test_async_close_wakes_a_waiting_receive(topics: list[str]) -> None:
    async def main() -> None:
        sub = AsyncRabbitMQSubscriber(topics[0], **F)
        await sub.open()
        waiter = asyncio.ensure_future(sub.receive())
        await asyncio.sleep(0.1)
        await sub.close()
        with pytest.raises(SubscriberClosedError):
            await asyncio.wait_for(waiter, 2)
        assert [m async for m in sub] == []

    asyncio.run(main())


@pytest.mark.parametrize("name", ["rabbitmq", "rabbitmq-queue"])
def test_bench_targets_move_100_messages(name: str, topics: list[str]) -> None:
    topic = topics[0]
    sent = [b"bench-%03d" % i for i in range(100)]
    pub, sub = open_endpoints(name, topic)
    try:
        for message in sent:
            pub.send(topic, message)
        pub.flush()
        assert receive_all(sub, 100) == sent
    finally:
        sub.close()
        pub.close()
    bare = open_bare(name, topic + "-bare")
    try:
        for message in sent:
            bare.send(message)
        bare.flush()
        assert [bare.receive() for _ in sent] == sent
    finally:
        bare.close()


def test_send_after_close_raises_publisher_closed_error(topics: list[str]) -> None:
    pub = RabbitMQPublisher(**Q)
    pub.close()
    pub.close()  # idempotent
    with pytest.raises(PublisherClosedError):
        pub.send(topics[0], b"late")

    async def main() -> None:
        async_pub = AsyncRabbitMQPublisher(**Q)
        await async_pub.open()
        await async_pub.close()
        with pytest.raises(PublisherClosedError):
            await async_pub.send(topics[0], b"late")
        with pytest.raises(PublisherClosedError):
            await async_pub.open()

    asyncio.run(main())


@pytest.mark.parametrize("cls", [RabbitMQPublisher, AsyncRabbitMQPublisher])
@pytest.mark.parametrize(
    ("kwargs", "error", "parameter"),
    [
        ({"retry": 30}, TypeError, "retry"),
        ({"confirm": "yes"}, TypeError, "confirm"),
    ],
)
def test_bad_publisher_arguments_name_the_parameter(
    cls: type,
    kwargs: dict[str, object],
    error: type[Exception],
    parameter: str,
) -> None:
    with pytest.raises(error, match=parameter):
        cls(host=HOST, port=free_port(), **kwargs)


def test_subscriber_retry_must_be_a_policy() -> None:
    with pytest.raises(TypeError, match="retry"):
        RabbitMQSubscriber("t", host=HOST, port=free_port(), retry=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry"):
        AsyncRabbitMQSubscriber("t", retry=5)  # type: ignore[arg-type]


def _overflow_queue(topic: str) -> dict[str, object]:
    """Work-queue kwargs for a queue that refuses publishes beyond 3 messages."""
    arguments = {**QUEUE_ARGUMENTS, "x-max-length": 3, "x-overflow": "reject-publish"}
    return {**Q, "queue_arguments": arguments}


def test_full_queue_nacks_are_resent_then_raise_buffer_full(topics: list[str]) -> None:
    """Confirms are on in work-queue mode: a refused message is neither lost nor silent."""
    topic = topics[0]
    kwargs = _overflow_queue(topic)
    policy = RetryPolicy(deadline=0.5, initial=0.05, maximum=0.1)
    sent = [b"m%d" % i for i in range(5)]
    with RabbitMQPublisher(retry=policy, **kwargs) as pub:  # type: ignore[arg-type]
        # Nacks make send (once they arrive) and flush wait and re-send, then
        # raise: the broker's limit pushes back on the producer.
        start = time.monotonic()
        refused = []
        for message in sent:
            try:
                pub.send(topic, message)
            except BufferFullError as exc:
                refused.append(exc)
        try:
            pub.flush()
        except BufferFullError as exc:
            refused.append(exc)
        assert refused
        assert all("reject-publish" in str(exc) for exc in refused)
        assert 0.4 < time.monotonic() - start < 10
        # The queue has room again once a consumer takes some: the kept
        # messages go out on the next flush, none twice, none lost.
        with RabbitMQSubscriber(topic, **kwargs) as sub:  # type: ignore[arg-type]
            got = receive_all(sub, 3)
            sub.ack()
            pub.flush()
            got += receive_all(sub, 2)
            sub.ack()
            with pytest.raises(StreamTimeoutError):
                sub.receive(0.3)
    assert sorted(got) == sent


def test_async_full_queue_nacks_are_resent_then_raise_buffer_full(topics: list[str]) -> None:
    topic = topics[0]
    kwargs = _overflow_queue(topic)
    policy = RetryPolicy(deadline=0.5, initial=0.05, maximum=0.1)
    sent = [b"m%d" % i for i in range(5)]

    async def main() -> list[bytes]:
        async with AsyncRabbitMQPublisher(retry=policy, **kwargs) as pub:  # type: ignore[arg-type]
            refused = 0
            for message in sent:
                try:
                    await pub.send(topic, message)
                except BufferFullError:
                    refused += 1
            try:
                await pub.flush()
            except BufferFullError:
                refused += 1
            assert refused
            async with AsyncRabbitMQSubscriber(topic, **kwargs) as reader:  # type: ignore[arg-type]
                got = [await reader.receive(10) for _ in range(3)]
                await reader.ack()
                await pub.flush()
                got += [await reader.receive(10) for _ in range(2)]
                await reader.ack()
                with pytest.raises(StreamTimeoutError):
                    await reader.receive(0.3)
            return got

    assert sorted(asyncio.run(main())) == sent


def test_work_queue_confirms_are_pipelined(topics: list[str]) -> None:
    """send does not wait for its confirm; flush waits for all of them."""
    topic = topics[0]
    with RabbitMQPublisher(**Q) as pub:
        for i in range(200):
            pub.send(topic, b"%d" % i)
        # A round trip per send would leave nothing outstanding here.
        assert len(pub._unconfirmed) > 0
        pub.flush()
        assert len(pub._unconfirmed) == 0
    with RabbitMQSubscriber(topic, **Q) as sub:
        assert receive_all(sub, 200) == [b"%d" % i for i in range(200)]
        sub.ack()


def test_channel_closed_by_broker_is_reported_not_retried(topics: list[str]) -> None:
    """PRECONDITION_FAILED (queue arguments differ) raises at once, every time."""
    topic = topics[0]
    other = {**Q, "queue_arguments": {**QUEUE_ARGUMENTS, "x-max-length": 7}}
    with RabbitMQPublisher(**Q) as pub:
        pub.send(topic, b"declared with the usual arguments")
    start = time.monotonic()
    pub = RabbitMQPublisher(**other)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(BrokerConnectionError, match="PRECONDITION_FAILED"):
            pub.send(topic, b"x")
    with contextlib.suppress(BrokerConnectionError):
        pub.close()

    async def main() -> None:
        async_pub = AsyncRabbitMQPublisher(**other)  # type: ignore[arg-type]
        await async_pub.open()
        for _ in range(2):
            with pytest.raises(BrokerConnectionError, match="PRECONDITION_FAILED"):
                await async_pub.send(topic, b"x")
        with contextlib.suppress(BrokerConnectionError):
            await async_pub.close()

    asyncio.run(main())
    assert time.monotonic() - start < 5


def test_async_explicit_ack_reaches_the_broker_before_close(topics: list[str]) -> None:
    """ack() returns once the broker applied it: a close right after loses no ack."""
    topic = topics[0]

    async def main() -> list[bytes]:
        async with AsyncRabbitMQPublisher(**Q) as pub:
            for i in range(3):
                await pub.send(topic, b"job-%d" % i)
        async with AsyncRabbitMQSubscriber(topic, **Q) as first:
            assert [await first.receive(10) for _ in range(2)] == [b"job-0", b"job-1"]
            await first.ack()
        async with AsyncRabbitMQSubscriber(topic, **Q) as second:
            rest = [await second.receive(10)]
            await second.ack()
            with pytest.raises(StreamTimeoutError):
                await second.receive(0.3)
            return rest

    assert asyncio.run(main()) == [b"job-2"]


@pytest.mark.parametrize("mode", [F, Q], ids=["fanout", "queue"])
def test_publisher_writes_each_small_message_as_one_chunk(
    mode: dict[str, object],
    topics: list[str],
) -> None:
    """Frames of a small message go out joined, large ones frame by frame; all arrive."""
    topic = topics[0]
    big = bytes(range(256)) * 1024  # 256 KiB: more than one body frame, not joined
    sent = [b"%d" % i for i in range(100)] + [big, b"after"]
    with (
        RabbitMQSubscriber(topic, **mode) as sub,  # type: ignore[arg-type]
        RabbitMQPublisher(**mode) as pub,  # type: ignore[arg-type]
    ):
        pub.send(topic, sent[0])  # declares the exchange or queue first
        connection = pub._connection._impl
        chunks: list[int] = []
        write = connection._transport.write

        def counting_write(data: bytes) -> None:
            chunks.append(len(data))
            write(data)

        connection._transport.write = counting_write
        frames = connection.frames_sent
        for message in sent[1:100]:
            pub.send(topic, message)
        # Method, header and body frame per message, still counted per frame.
        assert connection.frames_sent - frames == 3 * 99
        assert len(chunks) == 99
        for message in sent[100:]:
            pub.send(topic, message)
        assert len(chunks) > 101  # the big one is not joined
        pub.flush()
        assert receive_all(sub, len(sent)) == sent
        if mode is Q:
            sub.ack()


def test_publisher_notices_a_closed_channel_within_a_read_interval(topics: list[str]) -> None:
    """Sends write without a poll cycle, but still read what the broker says."""
    topic = topics[0]
    pub = RabbitMQPublisher(**F)  # type: ignore[arg-type]
    try:
        pub.send(topic, b"declares the exchange")
        with pika.BlockingConnection(pika.URLParameters(URL)) as admin:
            admin.channel().exchange_delete(DEFAULT_PREFIX + topic)

        # Publishing to a deleted exchange makes the broker close the channel.
        def send_until_refused() -> None:
            # The close arrives some sends later; bounded in count and time.
            give_up = time.monotonic() + 10
            for _ in range(100_000):
                pub.send(topic, b"x")
                if time.monotonic() > give_up:
                    return

        with pytest.raises(BrokerConnectionError, match="NOT_FOUND"):
            send_until_refused()
    finally:
        with contextlib.suppress(BrokerConnectionError):
            pub.close()


@pytest.mark.parametrize("mode", [F, Q], ids=["fanout", "queue"])
def test_async_publisher_joined_writes_keep_order(
    mode: dict[str, object],
    topics: list[str],
) -> None:
    """Writes of one loop turn leave as one chunk; large ones go through pika; order holds."""
    topic = topics[0]
    big = bytes(range(256)) * 512  # 128 KiB: several frames, past pika's buffer
    sent = [big + b"%d" % i if i % 7 == 0 else b"%d" % i for i in range(300)]

    async def main() -> list[bytes]:
        async with (
            AsyncRabbitMQSubscriber(topic, **mode) as sub,  # type: ignore[arg-type]
            AsyncRabbitMQPublisher(**mode) as pub,  # type: ignore[arg-type]
        ):
            for message in sent:
                await pub.send(topic, message)
            await pub.flush()
            got = [await sub.receive(10) for _ in sent]
            await sub.ack()
            return got

    assert asyncio.run(main()) == sent
