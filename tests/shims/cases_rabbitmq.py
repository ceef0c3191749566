"""Conformance cases for the RabbitMQ shim: fan-out and work-queue modes."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from proxystore_stream.shims.rabbitmq import DEFAULT_PREFIX
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQPublisher
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQSubscriber
from proxystore_stream.shims.rabbitmq import RabbitMQPublisher
from proxystore_stream.shims.rabbitmq import RabbitMQSubscriber
from tests.conftest import free_port
from tests.conftest import require_broker
from tests.shims.cases import ShimCase

HOST = "127.0.0.1"
PORT = 5672
# A backstop: queues a crashed test leaves behind expire after 5 idle minutes.
QUEUE_ARGUMENTS = {"x-expires": 300_000}


def delete_broker_objects(mode: str, names: set[str]) -> None:
    """Delete the queues (work queue) or exchanges (fan-out) a test created."""
    if not names:
        return
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters(HOST, PORT))
    try:
        channel = connection.channel()
        for name in sorted(names):
            if mode == "queue":
                channel.queue_delete(name)
            else:
                channel.exchange_delete(name)
    finally:
        with contextlib.suppress(Exception):
            connection.close()


class RabbitMQFactory:
    """Builds endpoints of one mode and deletes what they declared on close."""

    def __init__(self, mode: str) -> None:
        require_broker("RabbitMQ", HOST, PORT)
        self.mode = mode
        self.kwargs: dict[str, Any] = {"host": HOST, "port": PORT, "mode": mode}
        if mode == "queue":
            self.kwargs["queue_arguments"] = QUEUE_ARGUMENTS
        self.names: set[str] = set()
        self.publishers: list[Any] = []

    def _track(self, topics: Sequence[str]) -> None:
        self.names.update(DEFAULT_PREFIX + topic for topic in topics)

    def publisher(self) -> RabbitMQPublisher:
        pub = RabbitMQPublisher(**self.kwargs)
        self.publishers.append(pub)
        return pub

    def subscriber(self, topics: Sequence[str]) -> RabbitMQSubscriber:
        self._track(topics)
        return RabbitMQSubscriber(topics, **self.kwargs)

    async def async_publisher(self) -> AsyncRabbitMQPublisher:
        pub = AsyncRabbitMQPublisher(**self.kwargs)
        await pub.open()
        self.publishers.append(pub)
        return pub

    async def async_subscriber(self, topics: Sequence[str]) -> AsyncRabbitMQSubscriber:
        self._track(topics)
        sub = AsyncRabbitMQSubscriber(topics, **self.kwargs)
        await sub.open()
        return sub

    def close(self) -> None:
        # Publishers also declare topics no subscriber asked for.
        for pub in self.publishers:
            self.names.update(getattr(pub, "_declared", ()))
        delete_broker_objects(self.mode, self.names)


def unreachable_publisher() -> None:
    pub = RabbitMQPublisher(host=HOST, port=free_port())
    pub.send("pss-unreachable", b"x")


def unreachable_subscriber() -> None:
    sub = RabbitMQSubscriber("pss-unreachable", host=HOST, port=free_port())
    sub.receive(1.0)


CASES = [
    ShimCase(
        name="rabbitmq",
        make=lambda: RabbitMQFactory("fanout"),
        fanout=True,
        persistent=False,
        unreachable_publisher=unreachable_publisher,
        unreachable_subscriber=unreachable_subscriber,
    ),
    ShimCase(
        name="rabbitmq-queue",
        make=lambda: RabbitMQFactory("queue"),
        fanout=False,
        persistent=True,
        unreachable_publisher=unreachable_publisher,
        unreachable_subscriber=unreachable_subscriber,
    ),
]
