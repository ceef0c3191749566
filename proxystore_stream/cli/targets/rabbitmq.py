"""Bench targets for RabbitMQ: ``rabbitmq`` (fan-out) and ``rabbitmq-queue``.

The broker is taken from ``PSS_RABBITMQ_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/%2F``). Work queues made here expire
after 60 idle seconds (``x-expires``), for ours and the bare client alike.

Run ``python -m proxystore_stream.cli.targets.rabbitmq`` for a smoke check
and a side-by-side timing of our shim against bare pika.
"""

from __future__ import annotations

import os
import uuid

try:
    import pika
except ImportError as e:  # pragma: no cover - exercised by the extras test
    from proxystore_stream.exceptions import require

    require(__name__, "pika", "rabbitmq", e)

from proxystore_stream.cli.targets import BareClient
from proxystore_stream.cli.targets import time_through
from proxystore_stream.shims.rabbitmq import DEFAULT_PREFETCH
from proxystore_stream.shims.rabbitmq import DEFAULT_PREFIX
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQPublisher
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQSubscriber
from proxystore_stream.shims.rabbitmq import Mode
from proxystore_stream.shims.rabbitmq import RabbitMQPublisher
from proxystore_stream.shims.rabbitmq import RabbitMQSubscriber

__all__ = ["BARE_LABELS", "open_async_endpoints", "open_bare", "open_endpoints"]

_MODES: dict[str, Mode] = {"rabbitmq": "fanout", "rabbitmq-queue": "queue"}
BARE_LABELS = {
    "rabbitmq": "bare pika fanout exchange + consume()",
    "rabbitmq-queue": "bare pika durable queue, no confirms + consume()/basic_ack",
}
"""How the bench table names each bare client."""
_QUEUE_ARGUMENTS = {"x-expires": 60_000}


def _url() -> str:
    return os.environ.get("PSS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _mode(name: str) -> Mode:
    try:
        return _MODES[name]
    except KeyError:
        known = sorted(_MODES)
        raise ValueError(f"name must be one of {known}, not {name!r}") from None


def open_endpoints(
    name: str,
    topic: str,
) -> tuple[RabbitMQPublisher, RabbitMQSubscriber]:
    """Return our publisher and a subscriber ready to receive `topic`.

    Args:
        name: ``"rabbitmq"`` or ``"rabbitmq-queue"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not a RabbitMQ shim.
        BrokerConnectionError: If the broker cannot be reached.
    """
    mode = _mode(name)
    arguments = _QUEUE_ARGUMENTS if mode == "queue" else None
    publisher = RabbitMQPublisher(url=_url(), mode=mode, queue_arguments=arguments)
    try:
        subscriber = RabbitMQSubscriber(
            topic,
            url=_url(),
            mode=mode,
            queue_arguments=arguments,
        )
    except BaseException:
        publisher.close()
        raise
    return publisher, subscriber


async def open_async_endpoints(
    name: str,
    topic: str,
) -> tuple[AsyncRabbitMQPublisher, AsyncRabbitMQSubscriber]:
    """Async twin of `open_endpoints`: both opened, the subscriber subscribed."""
    mode = _mode(name)
    arguments = _QUEUE_ARGUMENTS if mode == "queue" else None
    publisher = AsyncRabbitMQPublisher(url=_url(), mode=mode, queue_arguments=arguments)
    subscriber = AsyncRabbitMQSubscriber(
        topic,
        url=_url(),
        mode=mode,
        queue_arguments=arguments,
    )
    try:
        await publisher.open()
        await subscriber.open()
    except BaseException:
        await subscriber.close()
        await publisher.close()
        raise
    return publisher, subscriber


class _BarePika:
    """pika as its tutorials use it: one connection per thread.

    Fan-out: publish to a fanout exchange, consume an exclusive queue with
    auto-ack. Work queue: publish persistent messages to a durable queue
    without publisher confirms (our work-queue publisher confirms, so the
    comparison includes what at-least-once costs), consume with prefetch and
    one ``basic_ack`` per message.
    """

    def __init__(self, mode: str, topic: str) -> None:
        self._mode = mode
        params = pika.URLParameters(_url())
        self._name = DEFAULT_PREFIX + topic
        self._pub = pika.BlockingConnection(params)
        self._sub = pika.BlockingConnection(params)
        self._pub_channel = self._pub.channel()
        channel = self._sub.channel()
        if mode == "fanout":
            self._pub_channel.exchange_declare(self._name, exchange_type="fanout")
            channel.exchange_declare(self._name, exchange_type="fanout")
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(queue, self._name)
            self._exchange, self._key = self._name, ""
            self._properties = None
        else:
            for ch in (self._pub_channel, channel):
                ch.queue_declare(self._name, durable=True, arguments=_QUEUE_ARGUMENTS)
            channel.basic_qos(prefetch_count=DEFAULT_PREFETCH)
            queue = self._name
            self._exchange, self._key = "", self._name
            self._properties = pika.BasicProperties(delivery_mode=2)
        self._sub_channel = channel
        self._messages = channel.consume(queue, auto_ack=mode == "fanout")

    def send(self, message: bytes) -> None:
        self._pub_channel.basic_publish(
            self._exchange,
            self._key,
            message,
            self._properties,
        )

    def flush(self) -> None:
        self._pub.process_data_events(time_limit=0)

    def receive(self) -> bytes:
        method, _properties, body = next(self._messages)
        if self._mode == "queue":
            self._sub_channel.basic_ack(method.delivery_tag)
        return body  # type: ignore[no-any-return]

    def close(self) -> None:
        for connection in (self._sub, self._pub):
            if connection.is_open:
                connection.close()


def open_bare(name: str, topic: str) -> BareClient:
    """Return bare pika sending and receiving `topic`, ready to receive.

    Args:
        name: ``"rabbitmq"`` or ``"rabbitmq-queue"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not a RabbitMQ shim.
    """
    return _BarePika(_mode(name), topic)


def _compare(name: str, size: int, count: int) -> tuple[float, float]:
    """Messages per second through ours and through bare pika."""
    payload = os.urandom(size)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    pub, sub = open_endpoints(name, topic)
    try:
        ours = time_through(
            lambda m: pub.send(topic, m),
            pub.flush,
            sub.receive,
            payload,
            count,
        )
    finally:
        sub.close()
        pub.close()
    bare = open_bare(name, topic + "-bare")
    try:
        theirs = time_through(bare.send, bare.flush, bare.receive, payload, count)
    finally:
        bare.close()
        _delete(name, [topic, topic + "-bare"])
    return count / ours, count / theirs


def _delete(name: str, topics: list[str]) -> None:
    """Delete the exchanges or queues a timing run declared."""
    connection = pika.BlockingConnection(pika.URLParameters(_url()))
    try:
        channel = connection.channel()
        for topic in topics:
            if _mode(name) == "queue":
                channel.queue_delete(DEFAULT_PREFIX + topic)
            else:
                channel.exchange_delete(DEFAULT_PREFIX + topic)
    finally:
        connection.close()


if __name__ == "__main__":
    for shim in _MODES:
        # Smoke: 100 messages through both.
        _compare(shim, 100, 100)
        for size, count in ((100, 20_000), (1024 * 1024, 300)):
            # Best of three alternating rounds: the two share one machine.
            rounds = [_compare(shim, size, count) for _ in range(3)]
            ours = max(r[0] for r in rounds)
            theirs = max(r[1] for r in rounds)
            print(
                f"{shim:15} {size:>8} B  ours {ours:9.0f} msg/s  "
                f"bare {theirs:9.0f} msg/s  ratio {ours / theirs:.2f}",
            )
