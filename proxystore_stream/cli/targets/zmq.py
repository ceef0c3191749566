"""Bench target for ZeroMQ: ``zmq`` (PUB/SUB over tcp:// on 127.0.0.1).

Both sides bind a free loopback port and use the same high-water mark
(`DEFAULT_HWM`), and on each side publisher and subscriber share one
context (one ZeroMQ I/O thread, as bare pyzmq's guide does it), so the
comparison measures the shim, not a queue size or a thread count. A
publisher's own context would add a second I/O thread, which on two cores
costs about a quarter more CPU per 1 MiB message (see docs/shims/zmq.md).
`open_async_endpoints` gives the zmq.asyncio twins, set up the same way.

Run ``python -m proxystore_stream.cli.targets.zmq`` for a smoke check and a
side-by-side timing of our shim against bare pyzmq.
"""

from __future__ import annotations

import threading
import time
from typing import Any

try:
    import zmq
    import zmq.asyncio
except ImportError as e:  # pragma: no cover - exercised by the extras test
    from proxystore_stream.exceptions import require

    require(__name__, "zmq", "zmq", e)

from proxystore_stream.cli.targets import BareClient
from proxystore_stream.shims.zmq import DEFAULT_HWM
from proxystore_stream.shims.zmq import AsyncZeroMQPublisher
from proxystore_stream.shims.zmq import AsyncZeroMQSubscriber
from proxystore_stream.shims.zmq import ZeroMQPublisher
from proxystore_stream.shims.zmq import ZeroMQSubscriber

__all__ = ["open_async_endpoints", "open_bare", "open_endpoints"]

_NAMES = ("zmq",)
_READY_TIMEOUT = 10.0


def _check(name: str) -> None:
    if name not in _NAMES:
        raise ValueError(f"name must be one of {list(_NAMES)}, not {name!r}")


def open_endpoints(name: str, topic: str) -> tuple[ZeroMQPublisher, ZeroMQSubscriber]:
    """Return our publisher and a subscriber ready to receive `topic`.

    Args:
        name: ``"zmq"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not a ZeroMQ shim.
        StreamTimeoutError: If the subscription does not arrive in 10 s.
    """
    _check(name)
    context: zmq.Context[Any] = zmq.Context.instance()
    publisher = ZeroMQPublisher("127.0.0.1", 0, context=context)
    try:
        subscriber = ZeroMQSubscriber(publisher.endpoint, topic=topic, context=context)
        try:
            publisher.wait_for_subscribers(topic, timeout=_READY_TIMEOUT)
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
) -> tuple[AsyncZeroMQPublisher, AsyncZeroMQSubscriber]:
    """Return the async twins of `open_endpoints`, the subscriber ready.

    Call it on the event loop that will use the endpoints.

    Args:
        name: ``"zmq"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not a ZeroMQ shim.
        StreamTimeoutError: If the subscription does not arrive in 10 s.
    """
    _check(name)
    context = zmq.asyncio.Context.instance()
    publisher = AsyncZeroMQPublisher("127.0.0.1", 0, context=context)
    try:
        subscriber = AsyncZeroMQSubscriber(publisher.endpoint, topic=topic, context=context)
        try:
            await publisher.wait_for_subscribers(topic, timeout=_READY_TIMEOUT)
        except BaseException:
            await subscriber.close()
            raise
    except BaseException:
        await publisher.close()
        raise
    return publisher, subscriber


class _BarePyZMQ:
    """pyzmq as its guide uses it: PUB binds, SUB connects, multipart frames.

    The topic frame is the topic itself (a plain prefix subscription, as the
    guide does it). Readiness is the guide's slow-joiner remedy: send probes
    until one arrives, then drain stray probes.
    """

    def __init__(self, topic: str) -> None:
        self._context: zmq.Context[Any] = zmq.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._sub = self._context.socket(zmq.SUB)
        self._pub.sndhwm = DEFAULT_HWM
        self._sub.rcvhwm = DEFAULT_HWM
        port = self._pub.bind_to_random_port("tcp://127.0.0.1")
        self._sub.connect(f"tcp://127.0.0.1:{port}")
        self._topic = topic.encode()
        self._sub.subscribe(self._topic)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            self._pub.send_multipart([self._topic, b""])
            if self._sub.poll(10):
                while self._sub.poll(100):
                    self._sub.recv_multipart()
                return
        self.close()
        raise TimeoutError("bare pyzmq subscriber did not become ready in 10 s")

    def send(self, message: bytes) -> None:
        self._pub.send_multipart([self._topic, message])

    def flush(self) -> None:
        """PUB sockets do not buffer on the caller's side."""

    def receive(self) -> bytes:
        return self._sub.recv_multipart()[1]

    def close(self) -> None:
        self._sub.close(linger=0)
        self._pub.close(linger=0)
        self._context.term()


def open_bare(name: str, topic: str) -> BareClient:
    """Return bare pyzmq PUB/SUB, subscribed and ready to receive `topic`.

    Args:
        name: ``"zmq"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not a ZeroMQ shim.
        TimeoutError: If the subscription does not arrive in 10 s.
    """
    _check(name)
    return _BarePyZMQ(topic)


def _time_ours(size: int, count: int) -> float:
    publisher, subscriber = open_endpoints("zmq", "bench")
    message = b"x" * size
    try:

        def send() -> None:
            for _ in range(count):
                publisher.send("bench", message)

        return _timed(send, lambda: subscriber.receive(30), count)
    finally:
        subscriber.close()
        publisher.close()


def _time_bare(size: int, count: int) -> float:
    bare = open_bare("zmq", "bench")
    message = b"x" * size
    try:

        def send() -> None:
            for _ in range(count):
                bare.send(message)

        return _timed(send, bare.receive, count)
    finally:
        bare.close()


def _timed(send: Any, receive: Any, count: int) -> float:
    """Messages per second, sender in a thread and receiver here."""
    sender = threading.Thread(target=send, daemon=True)
    start = time.perf_counter()
    sender.start()
    for _ in range(count):
        receive()
    elapsed = time.perf_counter() - start
    sender.join(10)
    return count / elapsed


def _smoke() -> None:
    publisher, subscriber = open_endpoints("zmq", "smoke")
    try:
        sent = [b"ours-%d" % i for i in range(100)]
        for message in sent:
            publisher.send("smoke", message)
        assert [subscriber.receive(10) for _ in sent] == sent
    finally:
        subscriber.close()
        publisher.close()
    bare = open_bare("zmq", "smoke")
    try:
        sent = [b"bare-%d" % i for i in range(100)]
        for message in sent:
            bare.send(message)
        assert [bare.receive() for _ in sent] == sent
    finally:
        bare.close()
    print("smoke: 100 messages through ours and bare: ok")


if __name__ == "__main__":
    _smoke()
    for size, count in ((100, 200_000), (1024 * 1024, 2_000)):
        ours = sorted(_time_ours(size, count) for _ in range(3))[1]
        bare = sorted(_time_bare(size, count) for _ in range(3))[1]
        print(
            f"{size:>8} B x {count}: ours {ours:,.0f} msg/s, bare {bare:,.0f} msg/s, "
            f"ratio {ours / bare:.2f}",
        )
