"""Kafka-specific behaviour (the shared contract is in test_conformance.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any
from typing import NamedTuple

import pytest

from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims import kafka as kafka_shim
from proxystore_stream.shims.kafka import AsyncKafkaPublisher
from proxystore_stream.shims.kafka import AsyncKafkaSubscriber
from proxystore_stream.shims.kafka import KafkaPublisher
from proxystore_stream.shims.kafka import KafkaSubscriber
from tests.kafka_broker import TansuBroker
from tests.kafka_broker import bootstrap
from tests.shims.cases_kafka import CONSUMER_SETTINGS

pytestmark = pytest.mark.timeout(120)

kafka = pytest.importorskip("kafka")


@pytest.fixture
def servers() -> str:
    return bootstrap()


def topic_name() -> str:
    return f"pss-kafka-{uuid.uuid4().hex[:12]}"


def subscriber(servers: str, topic: str, group: str, **kwargs: Any) -> KafkaSubscriber:
    sub = KafkaSubscriber.from_bootstrap(
        servers, [topic], group_id=group, **{**CONSUMER_SETTINGS, **kwargs}
    )
    sub.wait_assigned(30)
    return sub


@pytest.fixture
def published(servers: str) -> tuple[str, list[bytes]]:
    topic = topic_name()
    sent = [b"m%d" % i for i in range(10)]
    with KafkaPublisher.from_bootstrap(servers) as pub:
        for message in sent:
            pub.send(topic, message)
    return topic, sent


def test_crc32c_is_native() -> None:
    import kafka.record.util as util

    assert util.crc32c_c is not None, "install crc32c: the pure-Python CRC is ~30x slower"
    assert util.calc_crc32c.__defaults__ == (util.crc32c_c,)


def test_no_flush_per_message(servers: str) -> None:
    topic = topic_name()
    pub = KafkaPublisher.from_bootstrap(servers, linger_ms=5)
    flushes = 0
    real_flush = pub._client.flush

    def counting_flush(*args: Any, **kwargs: Any) -> Any:
        nonlocal flushes
        flushes += 1
        return real_flush(*args, **kwargs)

    pub._client.flush = counting_flush
    try:
        for i in range(2000):
            pub.send(topic, b"%06d" % i)
        assert flushes == 0
        pub.flush()
        assert flushes == 1
        per_request = pub._client.metrics()["producer-metrics"]["records-per-request-avg"]
        # Batched: many records per produce request (per-message flush gives ~1).
        assert per_request > 50
    finally:
        pub.close()
    assert flushes >= 2  # close() flushes (the client may flush again inside close)


def test_only_handed_over_messages_are_committed(
    servers: str,
    published: tuple[str, list[bytes]],
) -> None:
    topic, sent = published
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = subscriber(servers, topic, group)
    # The client fetched all 10; 0..3 are acked by asking for the next one,
    # 4 is handed over but not acked.
    assert [first.receive(15) for _ in range(5)] == sent[:5]
    first.close()
    second = subscriber(servers, topic, group)
    try:
        assert [second.receive(15) for _ in range(5)] == sent[4:9]
    finally:
        second.close()


def test_explicit_ack_commits_the_last_handed_message(
    servers: str,
    published: tuple[str, list[bytes]],
) -> None:
    topic, sent = published
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = subscriber(servers, topic, group)
    assert [first.receive(15) for _ in range(5)] == sent[:5]
    first.ack()
    first.close()
    second = subscriber(servers, topic, group)
    try:
        assert [second.receive(15) for _ in range(5)] == sent[5:]
        with pytest.raises(StreamTimeoutError):
            second.receive(0.3)
    finally:
        second.close()


def test_auto_commit_is_rejected(servers: str) -> None:
    with pytest.raises(ValueError, match="enable_auto_commit"):
        KafkaSubscriber.from_bootstrap(servers, ["t"], group_id="g", enable_auto_commit=True)
    consumer = kafka.KafkaConsumer(bootstrap_servers=servers, group_id="g")
    try:
        with pytest.raises(ValueError, match="enable_auto_commit"):
            KafkaSubscriber(consumer, topics=["t"])
    finally:
        consumer.close()


def test_from_bootstrap_passes_kwargs_through(servers: str) -> None:
    pub = KafkaPublisher.from_bootstrap(servers, client_id="pss-pub", linger_ms=7)
    sub = KafkaSubscriber.from_bootstrap(
        servers, [topic_name()], group_id="g-kw", client_id="pss-sub", fetch_min_bytes=3
    )
    try:
        assert pub._client.config["client_id"] == "pss-pub"
        assert pub._client.config["linger_ms"] == 7
        assert sub._client.config["client_id"] == "pss-sub"
        assert sub._client.config["fetch_min_bytes"] == 3
        assert sub._client.config["enable_auto_commit"] is False
        assert sub._client.config["auto_offset_reset"] == "earliest"
    finally:
        sub.close()
        pub.close()
    with pytest.raises((TypeError, ValueError), match="not_an_option"):
        KafkaPublisher.from_bootstrap(servers, not_an_option=1)


def test_message_at_max_size(servers: str) -> None:
    limit = 64 * 1024
    topic = topic_name()
    pub = KafkaPublisher.from_bootstrap(servers, max_request_size=limit)
    try:
        # The record batch adds a header of well under 100 bytes.
        biggest = b"b" * (limit - 100)
        pub.send(topic, biggest)
        pub.flush()
        with pytest.raises(ValueError, match="larger than the Kafka limit"):
            pub.send(topic, b"x" * (limit + 1))
    finally:
        pub.close()
    sub = subscriber(servers, topic, f"g-{uuid.uuid4().hex[:8]}")
    try:
        assert sub.receive(15) == biggest
    finally:
        sub.close()


def test_bad_arguments(servers: str) -> None:
    with pytest.raises(TypeError, match="topics"):
        KafkaSubscriber.from_bootstrap(servers, "a-str", group_id="g")
    with pytest.raises(TypeError, match="client"):
        KafkaPublisher(object())
    with KafkaPublisher.from_bootstrap(servers) as pub, pytest.raises(TypeError, match="message"):
        pub.send("t", "text")  # type: ignore[arg-type]


def test_async_receive_cancel_loses_nothing(servers: str) -> None:
    topic = topic_name()

    async def run() -> list[bytes]:
        pub = await AsyncKafkaPublisher.from_bootstrap(servers)
        sub = await AsyncKafkaSubscriber.from_bootstrap(
            servers, [topic], group_id=f"g-{uuid.uuid4().hex[:8]}", **CONSUMER_SETTINGS
        )
        try:
            await sub.wait_assigned(30)
            got: list[bytes] = []
            for i in range(20):
                await pub.send(topic, b"c%d" % i)
                await pub.flush()
                # Cancel receives at various points; none may swallow a message.
                task = asyncio.ensure_future(sub.receive(15))
                await asyncio.sleep(0.002 * (i % 4))
                task.cancel()
                try:
                    got.append(await task)
                except asyncio.CancelledError:
                    got.append(await sub.receive(15))
            while True:
                try:
                    got.append(await sub.receive(0.3))
                except StreamTimeoutError:
                    return got
        finally:
            await sub.close()
            await pub.close()
            with pytest.raises(SubscriberClosedError):
                await sub.receive(0)

    got = asyncio.run(run())
    assert sorted(got, key=lambda m: int(m[1:])) == [b"c%d" % i for i in range(20)]
    assert len(got) == len(set(got)) == 20


def test_async_only_handed_over_messages_are_committed(
    servers: str,
    published: tuple[str, list[bytes]],
) -> None:
    topic, sent = published
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def take(n: int, ack: bool) -> list[bytes]:
        sub = await AsyncKafkaSubscriber.from_bootstrap(
            servers, [topic], group_id=group, **CONSUMER_SETTINGS
        )
        try:
            got = [await sub.receive(15) for _ in range(n)]
            if ack:
                await sub.ack()
            return got
        finally:
            await sub.close()

    assert asyncio.run(take(3, ack=False)) == sent[:3]
    assert asyncio.run(take(3, ack=True)) == sent[2:5]
    assert asyncio.run(take(5, ack=False)) == sent[5:]


def test_confluent_clients(servers: str) -> None:
    confluent = pytest.importorskip("confluent_kafka")
    topic = topic_name()
    from proxystore_stream.shims.kafka import create_topics

    create_topics(servers, [topic])
    pub = KafkaPublisher(confluent.Producer({"bootstrap.servers": servers}))
    consumer = confluent.Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # librdkafka's defaults make tansu hold the first join ~23 s.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": 6000,
        },
    )
    sub = KafkaSubscriber(consumer, topics=[topic])
    try:
        sent = [b"k%d" % i for i in range(100)]
        for message in sent:
            pub.send(topic, message)
        pub.flush()
        assert [sub.receive(30) for _ in range(100)] == sent
        sub.ack()
    finally:
        sub.close()
        pub.close()


def test_bench_target_round_trip(servers: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSS_KAFKA_BOOTSTRAP", servers)
    from proxystore_stream.cli.targets.kafka import open_bare
    from proxystore_stream.cli.targets.kafka import open_endpoints

    topic = topic_name()
    pub, sub = open_endpoints("kafka", topic)
    try:
        sent = [b"o%d" % i for i in range(100)]
        for message in sent:
            pub.send(topic, message)
        pub.flush()
        assert [sub.receive(15) for _ in range(100)] == sent
    finally:
        sub.close()
        pub.close()
    bare = open_bare("kafka", topic_name())
    try:
        for i in range(100):
            bare.send(b"b%d" % i)
        bare.flush()
        assert [bare.receive() for _ in range(100)] == [b"b%d" % i for i in range(100)]
    finally:
        bare.close()


def test_unreachable_publisher_is_bounded() -> None:
    from tests.conftest import free_port

    with pytest.raises(BrokerConnectionError):
        KafkaPublisher.from_bootstrap(f"127.0.0.1:{free_port()}", bootstrap_timeout_ms=1000)


def test_missing_kafka_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['kafka'] = None\n"
        "try:\n"
        "    import proxystore_stream.shims.kafka\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=True,
    )
    assert "proxystore-stream[kafka]" in out.stdout


# ------------------------------------------------------ reliability (issue 5)


def test_send_after_close_raises_publisher_closed(servers: str) -> None:
    pub = KafkaPublisher.from_bootstrap(servers)
    pub.close()
    pub.close()  # idempotent
    with pytest.raises(PublisherClosedError):
        pub.send(topic_name(), b"late")

    async def run() -> None:
        apub = await AsyncKafkaPublisher.from_bootstrap(servers)
        await apub.close()
        with pytest.raises(PublisherClosedError):
            await apub.send(topic_name(), b"late")

    asyncio.run(run())


def test_retry_and_limits_are_checked(servers: str) -> None:
    with pytest.raises(TypeError, match="retry"):
        KafkaPublisher.from_bootstrap(servers, retry=5.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pending_bytes"):
        KafkaPublisher.from_bootstrap(servers, max_pending_bytes=0)
    with pytest.raises(TypeError, match="retry"):
        KafkaSubscriber.from_bootstrap(servers, [topic_name()], group_id="g", retry="x")  # type: ignore[arg-type]


def test_from_bootstrap_derives_client_settings_from_the_policy(servers: str) -> None:
    policy = RetryPolicy(deadline=90.0, initial=0.2, maximum=3.0)
    pub = KafkaPublisher.from_bootstrap(servers, retry=policy)
    try:
        config = pub._client.config
        assert config["acks"] == -1  # "all"
        assert config["enable_idempotence"] is True
        assert config["reconnect_backoff_ms"] == 200
        assert config["reconnect_backoff_max_ms"] == 3000
        # Buffered records outlive the shim's own deadline.
        assert config["delivery_timeout_ms"] == 120_000
    finally:
        pub.close()
    pub = KafkaPublisher.from_bootstrap(servers, retry=RetryPolicy(deadline=600), acks=1)
    try:
        assert pub._client.config["delivery_timeout_ms"] == 630_000
        assert pub._client.config["acks"] == 1  # callers win
    finally:
        pub.close()


def test_from_bootstrap_batches_up_to_1_mib(servers: str) -> None:
    """Larger batches than the clients' 16 KiB default; callers win; linger stays 0."""
    pub = KafkaPublisher.from_bootstrap(servers)
    try:
        assert pub._client.config["batch_size"] == 1024 * 1024
        assert pub._client.config["linger_ms"] == 0
    finally:
        pub.close()
    pub = KafkaPublisher.from_bootstrap(servers, batch_size=4096)
    try:
        assert pub._client.config["batch_size"] == 4096
    finally:
        pub.close()

    async def main() -> None:
        async_pub = await AsyncKafkaPublisher.from_bootstrap(servers)
        try:
            assert async_pub._client._message_accumulator._batch_size == 1024 * 1024
        finally:
            await async_pub.close()

    asyncio.run(main())


def test_unacknowledged_bytes_are_bounded_while_the_broker_is_away() -> None:
    broker = TansuBroker()
    broker.start()
    topic = topic_name()
    limit = 10_000
    pub = KafkaPublisher.from_bootstrap(
        broker.bootstrap, retry=RetryPolicy(deadline=1.0), max_pending_bytes=limit
    )
    try:
        pub.send(topic, b"first")
        pub.flush()
        broker.stop(signal.SIGKILL)
        accepted: list[int] = []

        def send_ten_times_the_limit() -> None:
            for i in range(1000):
                pub.send(topic, b"m" * 100)
                accepted.append(i)

        started = time.monotonic()
        with pytest.raises(BrokerConnectionError, match="no acknowledgement"):
            send_ten_times_the_limit()
        # send blocked once the limit was reached, and gave up at the deadline.
        assert len(accepted) == limit // 100
        assert pub._ledger.pending_bytes == limit
        assert 1.0 <= time.monotonic() - started < 3.0
    finally:
        broker.stop()
        with pytest.raises(BrokerConnectionError):
            pub.close()


def test_async_twins_give_up_when_the_broker_stays_away() -> None:
    broker = TansuBroker()
    broker.start()
    topic = topic_name()
    policy = RetryPolicy(deadline=1.5, maximum=0.5)

    async def run() -> None:
        pub = await AsyncKafkaPublisher.from_bootstrap(broker.bootstrap, retry=policy)
        sub = await AsyncKafkaSubscriber.from_bootstrap(
            broker.bootstrap, [topic], group_id=f"g-{topic}", retry=policy, **CONSUMER_SETTINGS
        )
        try:
            await sub.wait_assigned(30)
            await pub.send(topic, b"before")
            await pub.flush()
            assert await sub.receive(15) == b"before"
            broker.stop(signal.SIGKILL)
            await pub.send(topic, b"after")
            started = time.monotonic()
            with pytest.raises(BrokerConnectionError):
                await pub.flush()
            assert time.monotonic() - started < 4.0
            started = time.monotonic()
            with pytest.raises(BrokerConnectionError, match="no broker connection"):
                await sub.receive()
            assert time.monotonic() - started < 4.0
        finally:
            started = time.monotonic()
            with contextlib.suppress(BrokerConnectionError):
                await pub.close()
            await sub.close()
            assert time.monotonic() - started < 15.0

    try:
        asyncio.run(run())
    finally:
        broker.stop()


def test_delivery_commits_every_interval_while_serving_the_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(kafka_shim.time, "monotonic", lambda: now[0])
    delivery = kafka_shim._Delivery()
    delivery.extend({"tp": [_R("t", 0, i, b"%d" % i) for i in range(10)]})
    assert delivery.ready()
    delivery.take()
    delivery.ack_handed()
    assert delivery.due(now=now[0]) == {}  # the interval has not passed
    now[0] += kafka_shim.COMMIT_INTERVAL
    # A commit is due: the buffer is not served without the commit path.
    assert not delivery.ready()
    assert delivery.due(now=now[0]) == {("t", 0): 1}
    assert delivery.ready()  # checked just now
    delivery.mark_committed({("t", 0): 1})
    assert delivery.due() == {}
    # An async commit that failed is due again.
    delivery.forget_commits({("t", 0): 1})
    assert delivery.due() == {("t", 0): 1}
    delivery.forget_commits({("t", 0): 0})  # a stale failure changes nothing
    delivery.mark_committed({("t", 0): 1})
    delivery.forget_commits({("t", 0): 0})
    assert delivery.due() == {}


def test_outage_and_stall_raise_only_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(kafka_shim.time, "monotonic", lambda: now[0])
    outage = kafka_shim._Outage(2.0, "kafka://x")
    outage.check(False)
    now[0] = 1.9
    outage.check(False)
    outage.check(True)  # reconnected: the clock starts again
    now[0] = 3.0
    outage.check(False)
    now[0] = 4.9
    outage.check(False)
    now[0] = 5.0
    with pytest.raises(BrokerConnectionError, match="no broker connection"):
        outage.check(False)

    ledger = kafka_shim._Ledger()
    first, second = kafka.future.Future(), kafka.future.Future()
    ledger.track(first, 10)
    ledger.track(second, 20)
    stall = kafka_shim._Stall(ledger, 2.0, "kafka://x", "flush")
    now[0] = 6.9
    stall.check()
    first.success(_Meta(10))
    ledger.sweep()  # progress: the clock starts again
    now[0] = 8.0
    stall.check()
    assert (ledger.pending, ledger.pending_bytes) == (1, 20)
    now[0] = 9.9
    stall.check()
    now[0] = 10.0
    with pytest.raises(BrokerConnectionError, match="1 message"):
        stall.check()
    second.failure(kafka.errors.KafkaTimeoutError("expired"))
    ledger.sweep()
    assert (ledger.pending, ledger.pending_bytes) == (0, 0)
    assert ledger.take_failures()[0] == 1
    assert ledger.take_failures() == (0, None)


def test_the_ledger_settles_tracked_records_oldest_first() -> None:
    ledger = kafka_shim._Ledger()
    futures = [kafka.future.Future() for _ in range(4)]
    for i, future in enumerate(futures):
        ledger.track(future, 10 * (i + 1))
    futures[1].success(_Meta(20))  # done before the oldest: waits for it
    ledger.sweep()
    assert (ledger.pending, ledger.settled) == (4, 0)
    futures[0].failure(kafka.errors.KafkaTimeoutError("expired"))
    ledger.sweep()
    assert (ledger.pending, ledger.pending_bytes, ledger.settled) == (2, 70, 2)
    failed, error = ledger.take_failures()
    assert failed == 1
    assert isinstance(error, kafka.errors.KafkaTimeoutError)
    # A waiter is woken by the oldest record settling on another thread.
    threading.Timer(0.05, futures[2].success, (_Meta(30),)).start()
    threading.Timer(0.10, futures[3].success, (_Meta(40),)).start()
    assert ledger.wait(lambda: ledger.pending == 0, 10)
    assert (ledger.pending_bytes, ledger.settled, ledger.failed) == (0, 4, 0)
    assert not ledger.wait(lambda: ledger.pending < 0, 0.05)  # times out, no hang


class _R(NamedTuple):
    topic: str
    partition: int
    offset: int
    value: bytes


class _Meta(NamedTuple):
    serialized_value_size: int


def test_confluent_clients_give_up_when_the_broker_stays_away() -> None:
    confluent = pytest.importorskip("confluent_kafka")
    from proxystore_stream.shims.kafka import create_topics

    broker = TansuBroker()
    broker.start()
    topic = topic_name()
    create_topics(broker.bootstrap, [topic])
    policy = RetryPolicy(deadline=2.0)
    pub = KafkaPublisher(confluent.Producer({"bootstrap.servers": broker.bootstrap}), retry=policy)
    consumer = confluent.Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"g-{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": 6000,
        },
    )
    sub = KafkaSubscriber(consumer, topics=[topic], retry=policy)
    try:
        pub.send(topic, b"before")
        pub.flush()
        assert sub.receive(30) == b"before"
    finally:
        broker.stop(signal.SIGKILL)
    pub.send(topic, b"after")
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="no acknowledgement"):
        pub.flush()
    with pytest.raises(BrokerConnectionError, match="no broker connection"):
        sub.receive()
    # Both within the deadline plus one metadata probe and wait slice each.
    assert time.monotonic() - started < 7.0
    started = time.monotonic()
    sub.close()
    with pytest.raises(BrokerConnectionError):
        pub.close()  # purges the undelivered message instead of waiting 300 s
    assert time.monotonic() - started < 15.0


def test_delete_topics_removes_them_and_ignores_missing_ones(servers: str) -> None:
    from kafka import KafkaAdminClient

    topics = [topic_name(), topic_name()]
    kafka_shim.create_topics(servers, topics)
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        assert set(topics) <= set(admin.list_topics())
        kafka_shim.delete_topics(servers, topics)
        assert not set(topics) & set(admin.list_topics())
        kafka_shim.delete_topics(servers, [topic_name()])  # never made: no error
        kafka_shim.delete_topics(servers, [])
    finally:
        admin.close()


def test_delete_topics_on_an_unreachable_broker_raises_connection_error() -> None:
    with pytest.raises(BrokerConnectionError):
        kafka_shim.delete_topics("127.0.0.1:1", ["t"], bootstrap_timeout_ms=500)
