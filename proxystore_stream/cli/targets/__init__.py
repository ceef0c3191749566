"""Benchmark targets: how `proxystore-stream bench --shim NAME` builds endpoints.

Each broker module here provides, for every shim name it serves:

- `open_endpoints(name, topic) -> (publisher, subscriber)`: our shim's
  publisher and a subscriber that is subscribed and ready to receive
  `topic` (nothing sent after this returns is missed). Both are closed by
  the caller.
- `open_bare(name, topic) -> BareClient`: the broker's own client doing the
  same work with no proxystore_stream code in the way, ready likewise.
- optionally `delete_topics(name, topics)`: remove what a run left in the
  broker, called once the run's endpoints are closed (Kafka keeps every
  topic, with its payloads, until deleted).

`TARGETS` maps each shim name to its module; a module is imported only when
its shim is chosen, so a missing extra gives a clear MissingDependencyError.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from typing import Protocol

__all__ = ["TARGETS", "BareClient", "time_through"]

TARGETS: dict[str, str] = {
    "queue": "proxystore_stream.cli.targets.inprocess",
    "local": "proxystore_stream.cli.targets.inprocess",
    "redis": "proxystore_stream.cli.targets.redis",
    "redis-queue": "proxystore_stream.cli.targets.redis",
    "redis-queue-prefetch": "proxystore_stream.cli.targets.redis",
    "redis-stream": "proxystore_stream.cli.targets.redis",
    "zmq": "proxystore_stream.cli.targets.zmq",
    "kafka": "proxystore_stream.cli.targets.kafka",
    "rabbitmq": "proxystore_stream.cli.targets.rabbitmq",
    "rabbitmq-queue": "proxystore_stream.cli.targets.rabbitmq",
}


class BareClient(Protocol):
    """The bare broker client, sending and receiving raw bytes on one topic.

    `send` is called from one thread and `receive` from another, the same
    way the bench drives our publisher and subscriber.
    """

    def send(self, message: bytes) -> None:
        """Send one message the way the client's own docs recommend."""
        ...

    def flush(self) -> None:
        """Push out anything the client buffers (no-op if it buffers nothing)."""
        ...

    def receive(self) -> bytes:
        """Block until the next message arrives and return it."""
        ...

    def close(self) -> None:
        """Release everything the client opened."""
        ...


def time_through(send: Any, flush: Any, receive: Any, payload: bytes, count: int) -> float:
    """Seconds to push `count` messages through, sender in a second thread."""
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for _ in range(count):
                send(payload)
            flush()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    start = time.perf_counter()
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    for _ in range(count):
        if receive() != payload:
            raise AssertionError("received a different payload")
    elapsed = time.perf_counter() - start
    thread.join(30)
    if errors:
        raise errors[0]
    return elapsed
