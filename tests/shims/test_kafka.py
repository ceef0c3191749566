"""Kafka-specific behaviour (the shared contract is in test_conformance.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.shims.kafka import AsyncKafkaPublisher
from proxystore_stream.shims.kafka import AsyncKafkaSubscriber
from proxystore_stream.shims.kafka import KafkaPublisher
from proxystore_stream.shims.kafka import KafkaSubscriber
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
