"""Large objects over RabbitMQ: the object as the body, its envelope as a header."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream._core.envelope import decode_wire
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.protocols import DetachedMessage
from proxystore_stream.shims.rabbitmq import DEFAULT_PREFIX
from proxystore_stream.shims.rabbitmq import DETACH_THRESHOLD
from proxystore_stream.shims.rabbitmq import ENVELOPE_HEADER
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQPublisher
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQSubscriber
from proxystore_stream.shims.rabbitmq import RabbitMQPublisher
from proxystore_stream.shims.rabbitmq import RabbitMQSubscriber
from tests.conftest import require_broker
from tests.shims.cases_rabbitmq import HOST
from tests.shims.cases_rabbitmq import PORT
from tests.shims.cases_rabbitmq import QUEUE_ARGUMENTS
from tests.shims.cases_rabbitmq import delete_broker_objects
from tests.shims.detached_cases import assert_delivered
from tests.shims.detached_cases import deliver_then_join
from tests.shims.detached_cases import detached_kinds
from tests.shims.detached_cases import objects_around
from tests.shims.detached_cases import send_cases

MODES: dict[str, dict[str, Any]] = {
    "fanout": {"host": HOST, "port": PORT, "mode": "fanout"},
    "queue": {"host": HOST, "port": PORT, "mode": "queue", "queue_arguments": QUEUE_ARGUMENTS},
}
OBJECTS = objects_around(DETACH_THRESHOLD)


@pytest.fixture
def topic() -> Iterator[str]:
    require_broker("RabbitMQ", HOST, PORT)
    name = f"pss-test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_broker_objects("queue", {DEFAULT_PREFIX + name})
    delete_broker_objects("fanout", {DEFAULT_PREFIX + name})


@pytest.mark.parametrize("mode", sorted(MODES))
def test_large_objects_travel_as_the_body_with_the_envelope_as_a_header(
    topic: str, mode: str
) -> None:
    options = MODES[mode]
    with (
        RabbitMQPublisher(**options) as pub,
        RabbitMQSubscriber(topic, **options) as consumer_side,
    ):
        raw_side = RabbitMQSubscriber(topic, **options) if mode == "fanout" else None
        send_cases(pub, topic, OBJECTS)
        consumer: StreamConsumer[Any] = StreamConsumer(consumer_side, timeout=10)
        assert_delivered(list(consumer.iter_with_metadata()), OBJECTS)
        if raw_side is not None:
            with raw_side:
                # Subscribed after the sends: fan-out kept nothing for it; send again.
                send_cases(pub, topic, OBJECTS)
                messages = [raw_side.receive_detached(10) for _ in range(len(OBJECTS) + 1)]
                kinds = [type(m) is DetachedMessage for m in messages]
                assert kinds == detached_kinds(OBJECTS)
                first = messages[0]
                assert isinstance(first, DetachedMessage)
                assert first.frames == [b"x" * (1 << 20)]


def test_a_plain_receive_joins_body_and_envelope(topic: str) -> None:
    options = MODES["queue"]
    with RabbitMQPublisher(**options) as pub, RabbitMQSubscriber(topic, **options) as sub:
        producer: StreamProducer[bytes] = StreamProducer(pub)
        producer.send(topic, b"q" * (1 << 20), metadata={"m": 1})
        producer.flush()
        wire = decode_wire(sub.receive(10))
        assert wire.events == [[0, b"q" * (1 << 20), {"m": 1}]]


def test_a_foreign_header_that_is_not_an_envelope_is_malformed(topic: str) -> None:
    options = MODES["queue"]
    with RabbitMQSubscriber(topic, **options) as sub:
        connection = pika.BlockingConnection(pika.ConnectionParameters(HOST, PORT))
        try:
            channel = connection.channel()
            properties = pika.BasicProperties(headers={ENVELOPE_HEADER: b"not an envelope"})
            channel.basic_publish("", DEFAULT_PREFIX + topic, b"body", properties)
        finally:
            connection.close()
        arrived = sub.receive_detached(10)
        assert arrived == DetachedMessage(b"not an envelope", [b"body"])
        consumer: StreamConsumer[bytes] = StreamConsumer(sub)
        with pytest.raises(MalformedMessageError):
            consumer._state.take_detached(*arrived)


def test_messages_kept_for_a_resend_keep_their_envelope(topic: str) -> None:
    """A detached message waiting for its confirm is re-sent whole after a reconnect."""
    options = {**MODES["queue"], "confirm": True}
    with (
        RabbitMQPublisher(**options) as pub,
        RabbitMQSubscriber(topic, **MODES["queue"]) as sub,
    ):
        producer: StreamProducer[bytes] = StreamProducer(pub)
        producer.send(topic, b"r" * (1 << 18))
        entries = pub._unconfirmed.take_all()  # as a reconnect does
        assert len(entries) == 1
        pub._publish_again(entries)
        producer.flush()
        consumer: StreamConsumer[bytes] = StreamConsumer(sub)
        assert [consumer.next(10), consumer.next(10)] == [b"r" * (1 << 18)] * 2
        assert pub._unconfirmed.size == 0


def test_async_twins_detach_and_join_the_same_way(topic: str) -> None:
    options = MODES["queue"]

    async def main() -> tuple[list[Any], bytes]:
        pub = AsyncRabbitMQPublisher(**options)
        sub = AsyncRabbitMQSubscriber(topic, **options)
        try:
            await pub.open()
            await sub.open()
            return await deliver_then_join(pub, sub, topic, OBJECTS)
        finally:
            await sub.close()
            await pub.close()

    got, joined = asyncio.run(main())
    assert got == [obj for obj, _, _ in OBJECTS]
    assert decode_wire(joined).events[0][1] == b"j" * (1 << 20)
