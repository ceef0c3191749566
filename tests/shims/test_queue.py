"""Queue shim details the conformance suite does not cover."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import pytest

from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.shims.queue import QueuePublisher
from proxystore_stream.shims.queue import QueueSubscriber


@pytest.fixture
def process_queue() -> Any:
    q: Any = multiprocessing.Queue()
    yield q
    q.cancel_join_thread()
    q.close()


def test_timed_receives_of_ready_messages_keep_order(process_queue: Any) -> None:
    publisher = QueuePublisher({"t": process_queue})
    for i in range(500):
        publisher.send("t", i.to_bytes(2, "big"))
    subscriber = QueueSubscriber(process_queue)
    assert [int.from_bytes(subscriber.receive(timeout=5), "big") for _ in range(500)] == list(
        range(500)
    )
    with pytest.raises(StreamTimeoutError):
        subscriber.receive(timeout=0.05)


def test_two_readers_with_timeouts_never_wait_past_them(process_queue: Any) -> None:
    """Readers racing for fewer messages than they ask for all return in time."""
    publisher = QueuePublisher({"t": process_queue})
    readers = [QueueSubscriber(process_queue) for _ in range(2)]
    received: list[bytes] = []
    timeouts: list[float] = []
    lock = threading.Lock()

    def read(subscriber: QueueSubscriber) -> None:
        for _ in range(60):
            start = time.monotonic()
            try:
                message = subscriber.receive(timeout=0.2)
            except StreamTimeoutError:
                with lock:
                    timeouts.append(time.monotonic() - start)
                continue
            with lock:
                received.append(message)

    threads = [threading.Thread(target=read, args=(r,)) for r in readers]
    for thread in threads:
        thread.start()
    for i in range(50):
        publisher.send("t", str(i).encode())
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(int(m) for m in received) == list(range(50))
    assert len(timeouts) == 120 - 50
    assert max(timeouts) < 5  # bounded: nobody waited for a message another reader took


def test_a_subscriber_that_received_can_still_be_pickled(process_queue: Any) -> None:
    publisher = QueuePublisher({"t": process_queue})
    publisher.send("t", b"x")
    subscriber = QueueSubscriber(process_queue)
    assert subscriber.receive(timeout=5) == b"x"
    state = subscriber.__getstate__()
    assert state["_ready_reader"] is None
