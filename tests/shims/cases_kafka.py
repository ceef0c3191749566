"""Conformance cases for the Kafka shim (against tansu, or PSS_KAFKA_BOOTSTRAP).

Every subscriber a factory makes joins the same consumer group, so the
group shares the messages (fanout=False). `subscriber()` returns once the
group has settled with the new member in it: Kafka rebalances only while
members poll, so the factory polls the earlier members too (their fetched
messages stay buffered in them).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.shims.kafka import AsyncKafkaPublisher
from proxystore_stream.shims.kafka import AsyncKafkaSubscriber
from proxystore_stream.shims.kafka import KafkaPublisher
from proxystore_stream.shims.kafka import KafkaSubscriber
from tests.conftest import free_port
from tests.kafka_broker import bootstrap
from tests.shims.cases import ShimCase

MAX_MESSAGE = 16 * 1024 * 1024
# Generous: on a loaded 2-core machine a two-member join has taken over 30 s.
SETTLE_SECONDS = 60.0

# Short liveness settings: a rebalance waits for members at most this long.
GROUP_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 6000,
}
PRODUCER_SETTINGS: dict[str, Any] = {"max_request_size": MAX_MESSAGE}
CONSUMER_SETTINGS: dict[str, Any] = {
    **GROUP_SETTINGS,
    "max_partition_fetch_bytes": MAX_MESSAGE,
    "fetch_max_bytes": 4 * MAX_MESSAGE,
}


def settle(subscribers: list[KafkaSubscriber], newest: KafkaSubscriber) -> None:
    """Poll every open member until the newest one and all others hold assignments."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        for sub in list(subscribers):
            try:
                sub.wait_assigned(0.05)
            except StreamTimeoutError:
                pass
            except SubscriberClosedError:
                subscribers.remove(sub)
        if newest.assigned and all(sub.assigned for sub in subscribers):
            return
    raise TimeoutError(f"consumer group did not settle within {SETTLE_SECONDS} s")


class KafkaFactory:
    def __init__(self) -> None:
        self.servers = bootstrap()
        self.group = f"pss-group-{uuid.uuid4().hex[:12]}"
        self.subscribers: list[KafkaSubscriber] = []
        self.async_subscribers: list[AsyncKafkaSubscriber] = []

    def publisher(self) -> KafkaPublisher:
        return KafkaPublisher.from_bootstrap(self.servers, **PRODUCER_SETTINGS)

    def subscriber(self, topics: Sequence[str]) -> KafkaSubscriber:
        sub = KafkaSubscriber.from_bootstrap(
            self.servers, topics, group_id=self.group, **CONSUMER_SETTINGS
        )
        self.subscribers.append(sub)
        settle(self.subscribers, sub)
        return sub

    async def async_publisher(self) -> AsyncKafkaPublisher:
        return await AsyncKafkaPublisher.from_bootstrap(self.servers, **PRODUCER_SETTINGS)

    async def async_subscriber(self, topics: Sequence[str]) -> AsyncKafkaSubscriber:
        sub = await AsyncKafkaSubscriber.from_bootstrap(
            self.servers,
            topics,
            group_id=self.group,
            **CONSUMER_SETTINGS,
            rebalance_timeout_ms=GROUP_SETTINGS["max_poll_interval_ms"],
        )
        self.async_subscribers.append(sub)
        # aiokafka rebalances in the background; wait for every member.
        deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
        await sub.wait_assigned(SETTLE_SECONDS)
        while not all(s.assigned or s._closed for s in self.async_subscribers):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("consumer group did not settle")
            await asyncio.sleep(0.02)
        return sub

    def close(self) -> None:
        for sub in self.subscribers:
            sub.close()


def _dead() -> str:
    return f"127.0.0.1:{free_port()}"


def unreachable_publisher() -> None:
    publisher = KafkaPublisher.from_bootstrap(_dead(), bootstrap_timeout_ms=2000)
    publisher.send("pss-unreachable", b"x")
    publisher.flush()


def unreachable_subscriber() -> None:
    subscriber = KafkaSubscriber.from_bootstrap(
        _dead(), ["pss-unreachable"], group_id="g", bootstrap_timeout_ms=2000
    )
    subscriber.receive(1.0)


CASES = [
    ShimCase(
        name="kafka",
        make=KafkaFactory,
        fanout=False,
        persistent=True,
        unreachable_publisher=unreachable_publisher,
        unreachable_subscriber=unreachable_subscriber,
    ),
]
