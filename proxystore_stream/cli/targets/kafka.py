"""Bench target for Kafka: ``kafka``.

| name | ours | bare kafka-python |
| --- | --- | --- |
| ``kafka`` | `KafkaPublisher` / `KafkaSubscriber` | ``send`` + consumer iteration, one flush |

The broker is taken from ``PSS_KAFKA_BOOTSTRAP`` (default
``127.0.0.1:9092``). Each run uses a fresh consumer group; topics are
created with one partition. Messages up to 16 MiB are allowed on both sides.
Both producers batch up to 1 MiB (our `from_bootstrap` default; kafka-python's
own default of 16 KiB sends each 10 KiB record alone and stalls the bare run
against tansu), so the ratio measures the shim, not a batch-size setting.

Run ``python -m proxystore_stream.cli.targets.kafka`` for a smoke check and a
timing of our publisher, the bare client and a per-message-flush publisher
(ProxyStore's approach).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

try:
    import kafka
except ImportError as e:  # pragma: no cover - exercised by the extras test
    from proxystore_stream.exceptions import require

    require(__name__, "kafka", "kafka", e)

from proxystore_stream.cli.targets import BareClient
from proxystore_stream.shims import kafka as kafka_shim
from proxystore_stream.shims.kafka import AsyncKafkaPublisher
from proxystore_stream.shims.kafka import AsyncKafkaSubscriber
from proxystore_stream.shims.kafka import KafkaPublisher
from proxystore_stream.shims.kafka import KafkaSubscriber
from proxystore_stream.shims.kafka import create_topics

__all__ = [
    "BARE_LABELS",
    "delete_topics",
    "open_async_endpoints",
    "open_bare",
    "open_endpoints",
]

BARE_LABELS = {"kafka": "bare kafka-python send/iterate"}
"""How the bench table names each bare client."""

MAX_MESSAGE = 16 * 1024 * 1024
PRODUCER: dict[str, Any] = {"max_request_size": MAX_MESSAGE}
BARE_PRODUCER: dict[str, Any] = {**PRODUCER, "batch_size": 1024 * 1024}
"""kafka-python settings of the bare client: our `from_bootstrap` defaults."""
CONSUMER: dict[str, Any] = {
    "max_partition_fetch_bytes": MAX_MESSAGE,
    "fetch_max_bytes": 4 * MAX_MESSAGE,
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 6000,
}
_READY_SECONDS = 30.0


def _servers() -> str:
    return os.environ.get("PSS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _check(name: str) -> None:
    if name != "kafka":
        raise ValueError(f"name must be 'kafka', not {name!r}")


def _group() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def open_endpoints(name: str, topic: str) -> tuple[KafkaPublisher, KafkaSubscriber]:
    """Return our publisher and a subscriber that holds `topic`'s partition.

    Args:
        name: ``"kafka"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not ``"kafka"``.
        BrokerConnectionError: If the broker cannot be reached.
    """
    _check(name)
    publisher = KafkaPublisher.from_bootstrap(_servers(), **PRODUCER)
    try:
        subscriber = KafkaSubscriber.from_bootstrap(
            _servers(), [topic], group_id=_group(), **CONSUMER
        )
        try:
            subscriber.wait_assigned(_READY_SECONDS)
        except BaseException:
            subscriber.close()
            raise
    except BaseException:
        publisher.close()
        raise
    return publisher, subscriber


async def open_async_endpoints(
    name: str,
    topic: str,
) -> tuple[AsyncKafkaPublisher, AsyncKafkaSubscriber]:
    """Return the async twins of `open_endpoints`, subscribed and ready.

    Raises:
        ValueError: If `name` is not ``"kafka"``.
        BrokerConnectionError: If the broker cannot be reached.
    """
    _check(name)
    publisher = await AsyncKafkaPublisher.from_bootstrap(_servers(), **PRODUCER)
    try:
        subscriber = await AsyncKafkaSubscriber.from_bootstrap(
            _servers(), [topic], group_id=_group(), **CONSUMER
        )
        try:
            await subscriber.wait_assigned(_READY_SECONDS)
        except BaseException:
            await subscriber.close()
            raise
    except BaseException:
        await publisher.close()
        raise
    return publisher, subscriber


class _BareKafka:
    """kafka-python as its docs show it: send() futures, consumer iteration."""

    def __init__(self, topic: str) -> None:
        servers = _servers()
        create_topics(servers, [topic])
        self.topic = topic
        self.producer = kafka.KafkaProducer(bootstrap_servers=servers, **BARE_PRODUCER)
        self.consumer = kafka.KafkaConsumer(
            topic,
            bootstrap_servers=servers,
            group_id=_group(),
            auto_offset_reset="earliest",
            **CONSUMER,
        )
        deadline = time.monotonic() + _READY_SECONDS
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError("bare KafkaConsumer got no partition")
            self.consumer.poll(timeout_ms=100)
        self._records = iter(self.consumer)

    def send(self, message: bytes) -> None:
        self.producer.send(self.topic, message)

    def flush(self) -> None:
        self.producer.flush()

    def receive(self) -> bytes:
        return next(self._records).value  # type: ignore[no-any-return]

    def close(self) -> None:
        self.producer.close()
        self.consumer.close()


def open_bare(name: str, topic: str) -> BareClient:
    """Return bare kafka-python clients on `topic`, the consumer assigned.

    Raises:
        ValueError: If `name` is not ``"kafka"``.
    """
    _check(name)
    return _BareKafka(topic)


class _FlushEachPublisher:
    """ProxyStore's KafkaPublisher approach: flush after every send."""

    def __init__(self) -> None:
        self.client = kafka.KafkaProducer(bootstrap_servers=_servers(), **PRODUCER)

    def send(self, topic: str, message: bytes) -> None:
        self.client.send(topic, message)
        self.client.flush()

    def close(self) -> None:
        self.client.close()


def _time_sends(publisher: Any, subscriber: Any, topic: str, size: int, n: int) -> float:
    message = b"x" * size
    start = time.perf_counter()
    for _ in range(n):
        publisher.send(topic, message)
    if hasattr(publisher, "flush"):
        publisher.flush()
    for _ in range(n):
        subscriber.receive(30.0)
    return time.perf_counter() - start


def delete_topics(name: str, topics: list[str]) -> None:
    """Delete a run's topics: the broker would keep every payload sent to them.

    A session of 1 MiB runs left gigabytes in the memory of a tansu broker
    (its in-memory storage) before this.
    """
    kafka_shim.delete_topics(_servers(), topics)


def _main() -> None:  # pragma: no cover - manual smoke check
    for size, n in ((100, 20000), (1024 * 1024, 100)):
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        publisher, subscriber = open_endpoints("kafka", topic)
        ours = _time_sends(publisher, subscriber, topic, size, n)
        flush_each = _FlushEachPublisher()
        slow_n = max(1, n // 10)
        slow = _time_sends(flush_each, subscriber, topic, size, slow_n) * n / slow_n
        flush_each.close()
        subscriber.close()
        publisher.close()
        bare = open_bare("kafka", f"{topic}-bare")
        message = b"x" * size
        start = time.perf_counter()
        for _ in range(n):
            bare.send(message)
        bare.flush()
        for _ in range(n):
            assert len(bare.receive()) == size
        bare_s = time.perf_counter() - start
        bare.close()
        delete_topics("kafka", [topic, f"{topic}-bare"])
        mb = size * n / 1e6
        print(
            f"{size:>8} B x {n}: ours {n / ours:9.0f} msg/s {mb / ours:7.1f} MB/s | "
            f"bare {n / bare_s:9.0f} msg/s | flush-each {n / slow:8.0f} msg/s "
            f"({slow / ours:.0f}x slower)",
        )


if __name__ == "__main__":  # pragma: no cover
    _main()
