"""Queue shim details the conformance suite does not cover."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import multiprocessing
import os
import queue
import struct
import threading
import time
from multiprocessing.reduction import ForkingPickler
from typing import Any

import pytest

import proxystore_stream.shims.queue as queue_shim
from proxystore_stream._readable import watchers
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.shims.queue import AsyncQueueSubscriber
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
    assert state["_taker"] is None


def test_a_receive_waits_for_a_message_sent_later(process_queue: Any) -> None:
    publisher = QueuePublisher({"t": process_queue})
    subscriber = QueueSubscriber(process_queue)
    sender = threading.Timer(0.05, publisher.send, ("t", b"late"))
    sender.start()
    try:
        assert subscriber.receive(timeout=5) == b"late"
    finally:
        sender.join(5)


def test_close_ends_a_blocked_receive(process_queue: Any) -> None:
    subscriber = QueueSubscriber(process_queue)
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            subscriber.receive()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=receive)
    thread.start()
    subscriber.close()
    thread.join(5)
    assert not thread.is_alive()
    assert [type(e) for e in errors] == [SubscriberClosedError]


def test_async_receive_waits_on_the_pipe_and_honours_its_timeout(process_queue: Any) -> None:
    async def main() -> bytes:
        subscriber = AsyncQueueSubscriber(process_queue)
        with pytest.raises(StreamTimeoutError):
            await subscriber.receive(0.05)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, QueuePublisher({"t": process_queue}).send, "t", b"late")
        return await subscriber.receive(5)

    assert asyncio.run(main()) == b"late"


def test_cancelled_async_receive_loses_no_message(process_queue: Any) -> None:
    n = 200
    publisher = QueuePublisher({"t": process_queue})

    async def main() -> tuple[list[bytes], int]:
        subscriber = AsyncQueueSubscriber(process_queue)
        got: list[bytes] = []
        cancelled = 0
        for i in range(n):
            task = asyncio.ensure_future(subscriber.receive(5))
            await asyncio.sleep(0)  # the receive now waits on the pipe
            sender = threading.Thread(target=publisher.send, args=("t", b"%d" % i))
            sender.start()
            if i % 2:
                await asyncio.sleep(0)
            task.cancel()
            try:
                got.append(await task)
            except asyncio.CancelledError:
                cancelled += 1
            await asyncio.to_thread(sender.join, 5)
        while len(got) < n:
            try:
                got.append(await subscriber.receive(1))
            except StreamTimeoutError:
                break
        await subscriber.close()
        return got, cancelled

    got, cancelled = asyncio.run(main())
    assert got == [b"%d" % i for i in range(n)]
    assert cancelled > 0


def test_two_async_readers_share_one_queue_without_loss(process_queue: Any) -> None:
    n = 300
    publisher = QueuePublisher({"t": process_queue})

    async def read(subscriber: AsyncQueueSubscriber, out: list[bytes]) -> None:
        while True:
            try:
                out.append(await subscriber.receive(0.5))
            except StreamTimeoutError:
                return

    async def main() -> list[list[bytes]]:
        outs: list[list[bytes]] = [[], []]
        readers = [read(AsyncQueueSubscriber(process_queue), out) for out in outs]
        sender = asyncio.to_thread(lambda: [publisher.send("t", b"%d" % i) for i in range(n)])
        await asyncio.gather(sender, *readers)
        return outs

    outs = asyncio.run(main())
    assert sorted(int(m) for out in outs for m in out) == list(range(n))
    for out in outs:  # each reader sees its share in order
        assert [int(m) for m in out] == sorted(int(m) for m in out)


def test_two_async_readers_waiting_on_one_loop_are_each_woken(
    process_queue: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A loop keeps one reader callback per file descriptor. When each
    # subscriber registered its own, the second replaced the first, and the
    # first slept until its slice timer: with a 60 s slice, until the wait_for
    # below gives up.
    monkeypatch.setattr(queue_shim, "SLICE_SECONDS", 60.0)
    publisher = QueuePublisher({"t": process_queue})

    async def main() -> list[list[bytes]]:
        subscribers = [AsyncQueueSubscriber(process_queue) for _ in range(2)]
        rounds = []
        for i in range(5):
            tasks = [asyncio.ensure_future(s.receive(120)) for s in subscribers]
            await asyncio.sleep(0)  # both receives now wait on the pipe
            publisher.send("t", b"%d-a" % i)
            publisher.send("t", b"%d-b" % i)
            rounds.append(sorted(await asyncio.wait_for(asyncio.gather(*tasks), 10)))
            assert watchers(process_queue._reader.fileno()) == 0
        return rounds

    assert asyncio.run(main()) == [[b"%d-a" % i, b"%d-b" % i] for i in range(5)]


# --- reading the pipe directly -------------------------------------------------

SIZES = [0, 1, 100, 4095, 4096, 70_000, 1 << 20, 3 << 20]
"""Bodies that fit a pipe write, straddle its 64 KiB buffer, and need many reads."""


@pytest.fixture(params=["nowait", "poll"])
def reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a subscriber learns that a message is there."""
    if request.param == "poll":
        monkeypatch.setattr(queue_shim, "_NOWAIT_READS", False)
    elif not queue_shim._NOWAIT_READS:
        pytest.skip("this kernel or platform has no RWF_NOWAIT reads")
    return str(request.param)


def test_messages_of_every_size_arrive_whole_and_in_order(process_queue: Any, reads: str) -> None:
    publisher = QueuePublisher({"t": process_queue})
    subscriber = QueueSubscriber(process_queue)
    sent = [bytes([i]) * size for i, size in enumerate(SIZES)]
    sender = threading.Thread(target=lambda: [publisher.send("t", m) for m in sent])
    sender.start()
    received = [subscriber.receive(timeout=10) for _ in sent]
    sender.join(10)
    assert [len(m) for m in received] == SIZES
    assert received == sent
    assert subscriber._pipe_fd is not None  # the pipe was read directly
    with pytest.raises(StreamTimeoutError):
        subscriber.receive(timeout=0.05)


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_the_pipe_grows_once_a_message_over_4_kib_came(process_queue: Any) -> None:
    publisher = QueuePublisher({"t": process_queue})
    subscriber = QueueSubscriber(process_queue)
    fd = process_queue._reader.fileno()
    for small in (b"small", b"s" * (queue_shim.GROW_FROM // 2)):
        publisher.send("t", small)
        assert subscriber.receive(timeout=10) == small
    assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == 64 * 1024  # small messages: untouched
    medium = b"m" * (10 << 10)
    publisher.send("t", medium)
    assert subscriber.receive(timeout=10) == medium
    assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == queue_shim.PIPE_CAPACITY
    large = [bytes([i]) * (3 << 20) for i in range(3)]
    sender = threading.Thread(target=lambda: [publisher.send("t", m) for m in large])
    sender.start()
    assert [subscriber.receive(timeout=10) for _ in large] == large
    sender.join(10)
    assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == queue_shim.PIPE_CAPACITY


def test_a_pipe_the_kernel_will_not_grow_keeps_working(
    process_queue: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # More than any kernel grants: the request fails, and is ignored.
    monkeypatch.setattr(queue_shim, "PIPE_CAPACITY", 1 << 40)
    publisher = QueuePublisher({"t": process_queue})
    subscriber = QueueSubscriber(process_queue)
    large = b"x" * (1 << 20)
    sender = threading.Thread(target=publisher.send, args=("t", large))
    sender.start()
    assert subscriber.receive(timeout=10) == large
    sender.join(10)


def test_a_kernel_refusing_nowait_reads_falls_back_to_poll(
    process_queue: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def refuse(*args: Any) -> int:
        calls.append(args)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(queue_shim.os, "preadv", refuse)
    monkeypatch.setattr(queue_shim, "_NOWAIT_READS", True)
    publisher = QueuePublisher({"t": process_queue})
    subscriber = QueueSubscriber(process_queue)
    for i in range(3):
        publisher.send("t", b"%d" % i)
    assert [subscriber.receive(timeout=5) for _ in range(3)] == [b"0", b"1", b"2"]
    assert len(calls) == 1  # asked once, then polled


def test_a_frame_with_the_wide_length_header_is_read(process_queue: Any, reads: str) -> None:
    """Bodies of 2 GiB and more carry -1 and an 8-byte length: the same framing, smaller."""
    body = ForkingPickler.dumps(b"wide" * 1000)
    process_queue._sem.acquire()  # what put() does for each message
    os.write(
        process_queue._writer.fileno(),
        struct.pack("!i", -1) + struct.pack("!Q", len(body)) + body,
    )
    QueuePublisher({"t": process_queue}).send("t", b"next")
    subscriber = QueueSubscriber(process_queue)
    assert subscriber.receive(timeout=5) == b"wide" * 1000
    assert subscriber.receive(timeout=5) == b"next"


def _plain_get_until_empty(q: Any, out: Any, reading: Any) -> None:
    """A reader in another process using the queue's own `get`."""
    got = [q.get(timeout=30)]
    reading.set()
    while True:
        try:
            got.append(q.get(timeout=1))
        except queue.Empty:
            break
    out.put(got)


def test_our_reader_and_plain_get_in_another_process_share_a_queue() -> None:
    context = multiprocessing.get_context("spawn")
    q: Any = context.Queue()
    out: Any = context.Queue()
    reading = context.Event()
    n = 2000
    child = context.Process(target=_plain_get_until_empty, args=(q, out, reading))
    child.start()
    try:
        publisher = QueuePublisher({"t": q})
        for i in range(n):
            publisher.send("t", b"%d" % i + b"." * (i % 7 * 3000))
        subscriber = QueueSubscriber(q)
        assert reading.wait(30)
        ours = []
        while True:
            try:
                ours.append(subscriber.receive(timeout=1))
            except StreamTimeoutError:
                break
        theirs = out.get(timeout=30)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
        q.cancel_join_thread()
        q.close()
    numbers = sorted(int(m.rstrip(b".")) for m in ours + theirs)
    assert numbers == list(range(n))  # each message whole, exactly once
    assert ours
    assert theirs
    for m in ours + theirs:
        assert len(m) == len(m.rstrip(b".")) + int(m.rstrip(b".")) % 7 * 3000
