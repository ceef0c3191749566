"""ZeroMQ-specific behaviour: framing, topologies, HWM, zero-copy, close."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

import proxystore_stream.shims.zmq as zmq_shim
from proxystore_stream._readable import watchers
from proxystore_stream.cli.targets.zmq import open_async_endpoints
from proxystore_stream.cli.targets.zmq import open_bare
from proxystore_stream.cli.targets.zmq import open_endpoints
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.shims.zmq import DEFAULT_ASYNC_ZERO_COPY_THRESHOLD
from proxystore_stream.shims.zmq import DEFAULT_HWM
from proxystore_stream.shims.zmq import DEFAULT_ZERO_COPY_THRESHOLD
from proxystore_stream.shims.zmq import DETACH_THRESHOLD
from proxystore_stream.shims.zmq import SINGLE_FRAME_LIMIT
from proxystore_stream.shims.zmq import AsyncZeroMQPublisher
from proxystore_stream.shims.zmq import AsyncZeroMQSubscriber
from proxystore_stream.shims.zmq import ZeroMQForwarder
from proxystore_stream.shims.zmq import ZeroMQPublisher
from proxystore_stream.shims.zmq import ZeroMQSubscriber

LOCAL = "127.0.0.1"


def drain(sub: ZeroMQSubscriber, quiet: float = 0.3) -> list[bytes]:
    """Everything `sub` receives until it stays quiet for `quiet` seconds."""
    received = []
    for _ in range(1_000_000):
        try:
            received.append(sub.receive(quiet))
        except StreamTimeoutError:
            break
    return received


@pytest.fixture
def ipc_endpoint() -> Iterator[str]:
    path = os.path.join(tempfile.gettempdir(), f"pss-zmq-{uuid.uuid4().hex[:12]}.sock")
    yield f"ipc://{path}"
    if os.path.exists(path):
        os.unlink(path)


def test_topic_framing_is_exact() -> None:
    with (
        ZeroMQPublisher(LOCAL, 0) as pub,
        ZeroMQSubscriber(pub.endpoint, topic="a") as sub_a,
        ZeroMQSubscriber(pub.endpoint, topic="") as sub_all,
        ZeroMQSubscriber(pub.endpoint, topic=["ab", "b"]) as sub_ab_b,
    ):
        assert pub.wait_for_subscribers("a", 2) == 2  # "a" and everything
        assert pub.wait_for_subscribers("ab", 2) == 2
        for topic in ("ab", "a", "abc", "b", "ba", "a"):
            pub.send(topic, topic.encode())
        assert [sub_a.receive(5), sub_a.receive(5)] == [b"a", b"a"]
        assert drain(sub_a) == []
        assert drain(sub_all) == [b"ab", b"a", b"abc", b"b", b"ba", b"a"]
        assert drain(sub_ab_b) == [b"ab", b"b"]


def _raw_subscriber(endpoint: str, topic: bytes) -> zmq.Socket[Any]:
    raw: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.SUB)
    raw.setsockopt(zmq.SUBSCRIBE, topic)
    raw.connect(endpoint)
    return raw


def _frames_of(raw: zmq.Socket[Any]) -> list[bytes]:
    assert raw.poll(5000), "no message within 5 s"
    return raw.recv_multipart()


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_small_messages_travel_in_one_frame_behind_their_topic(use_async: bool) -> None:
    """Up to SINGLE_FRAME_LIMIT bytes: [topic + NUL + message]; above: two frames."""
    small, limit, large = b"s" * 10, b"l" * SINGLE_FRAME_LIMIT, b"L" * (SINGLE_FRAME_LIMIT + 1)
    mutable = bytearray(b"m" * 10)  # not bytes: sent as its own (copied) frame

    async def send_async(endpoint_box: list[str], ready: threading.Event) -> None:
        async with AsyncZeroMQPublisher(LOCAL, 0) as pub:
            endpoint_box.append(pub.endpoint)
            ready.set()
            await pub.wait_for_subscribers("t")
            for message in (small, limit, large, mutable):
                await pub.send("t", message)

    if use_async:
        box: list[str] = []
        ready = threading.Event()
        sender = threading.Thread(target=asyncio.run, args=(send_async(box, ready),))
        sender.start()
        assert ready.wait(5)
        raw = _raw_subscriber(box[0], b"t\x00")
        try:
            received = [_frames_of(raw) for _ in range(4)]
        finally:
            sender.join(10)
            raw.close(linger=0)
    else:
        with ZeroMQPublisher(LOCAL, 0) as pub:
            raw = _raw_subscriber(pub.endpoint, b"t\x00")
            try:
                pub.wait_for_subscribers("t")
                for message in (small, limit, large, mutable):
                    pub.send("t", message)
                received = [_frames_of(raw) for _ in range(4)]
            finally:
                raw.close(linger=0)
    assert received == [
        [b"t\x00" + small],
        [b"t\x00" + limit],
        [b"t\x00", large],
        [b"t\x00", bytes(mutable)],
    ]


@pytest.mark.parametrize(
    "frames",
    [[b"t\x00one frame"], [b"t\x00", b"two frames"]],
    ids=["one-frame", "two-frames"],
)
def test_a_foreign_publisher_may_send_either_form(frames: list[bytes]) -> None:
    with ZeroMQSubscriber(LOCAL, 0, bind=True, topic="t") as sub:
        raw = zmq.Context.instance().socket(zmq.PUB)
        try:
            raw.connect(sub.endpoint)
            deadline = time.monotonic() + 10
            received = None
            while received is None and time.monotonic() < deadline:
                raw.send_multipart(frames)  # PUB drops until connected
                with contextlib.suppress(StreamTimeoutError):
                    received = sub.receive(0.05)
            assert received == frames[-1].removeprefix(b"t\x00")
        finally:
            raw.close(linger=0)


def test_receive_waits_as_long_as_each_call_asks() -> None:
    """The blocking receive's RCVTIMEO follows each call's timeout (short, then long)."""
    with ZeroMQPublisher(LOCAL, 0) as pub, ZeroMQSubscriber(pub.endpoint, topic="t") as sub:
        pub.wait_for_subscribers("t")
        start = time.monotonic()
        with pytest.raises(StreamTimeoutError):
            sub.receive(0.05)
        assert time.monotonic() - start < 1.0
        sending = threading.Event()

        def send_later() -> None:
            time.sleep(0.3)  # longer than the short timeout above, well inside the long one
            # Set before the send: the receiver may return before this thread
            # runs again after it.
            sending.set()
            pub.send("t", b"late")

        sender = threading.Thread(target=send_later)
        sender.start()
        try:
            assert sub.receive(10) == b"late"
            assert sending.is_set()
        finally:
            sender.join(5)
        start = time.monotonic()
        with pytest.raises(StreamTimeoutError):
            sub.receive(0.25)
        assert 0.2 <= time.monotonic() - start < 1.5


def test_a_socket_that_fails_its_setup_is_closed_so_the_context_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A publisher whose socket fails after it was made raises at once (no hang in term())."""

    def refuse(socket: zmq.Socket[Any], *args: Any, **kwargs: Any) -> str:
        raise zmq.ZMQError(zmq.EINVAL, "refused")

    monkeypatch.setattr(zmq_shim, "_open", refuse)
    outcome: list[BaseException] = []
    thread = threading.Thread(
        target=lambda: outcome.append(_raised(lambda: ZeroMQPublisher(LOCAL, 0))), daemon=True
    )
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the constructor hung"
    assert isinstance(outcome[0], zmq.ZMQError)


def _raised(make: Any) -> BaseException:
    try:
        make()
    except BaseException as exc:
        return exc
    raise AssertionError("expected an error")


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="port"):
        ZeroMQPublisher(LOCAL)
    with pytest.raises(ValueError, match="port"):
        ZeroMQPublisher("tcp://127.0.0.1:5555", 5555)
    with pytest.raises(ValueError, match="port 0"):
        ZeroMQSubscriber(LOCAL, 0)
    with pytest.raises(ValueError, match="sndhwm"):
        ZeroMQPublisher(LOCAL, 0, sndhwm=-1)
    with pytest.raises(ValueError, match="linger"):
        ZeroMQPublisher(LOCAL, 0, linger=-1)
    with pytest.raises(TypeError, match="no_such_option"):
        ZeroMQPublisher(LOCAL, 0, no_such_option=1)
    for threshold in (-1, 2**31, 2**40):  # pyzmq keeps it in a C int
        with pytest.raises(ValueError, match="zero_copy_threshold"):
            ZeroMQPublisher(LOCAL, 0, zero_copy_threshold=threshold)
    with pytest.raises(ValueError, match="topic"):
        ZeroMQSubscriber(LOCAL, 1, topic=[])
    with ZeroMQPublisher(LOCAL, 0) as pub:
        with pytest.raises(ValueError, match="NUL"):
            pub.send("a\x00b", b"x")
        with pytest.raises(TypeError, match="topic"):
            pub.send(b"a", b"x")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="closed"):
        pub.send("a", b"x")


def test_bind_to_an_endpoint_in_use_raises_connection_error() -> None:
    with ZeroMQPublisher(LOCAL, 0) as pub:
        with pytest.raises(BrokerConnectionError) as info:
            ZeroMQPublisher(pub.endpoint)
        assert isinstance(info.value.__cause__, zmq.ZMQError)


def test_reverse_mode_many_publishers_one_bound_subscriber() -> None:
    received: list[bytes] = []
    with ZeroMQSubscriber(LOCAL, 0, topic="t", bind=True) as sub:
        # A binding SUB completes new connections only while it is in use.
        consumer = threading.Thread(
            target=lambda: received.extend(sub.receive(10) for _ in range(300)),
            daemon=True,
        )
        consumer.start()
        pubs = [ZeroMQPublisher(sub.endpoint, bind=False) for _ in range(3)]
        try:
            for pub in pubs:
                assert pub.wait_for_subscribers("t") == 1
            for i in range(100):
                for p, pub in enumerate(pubs):
                    pub.send("t", b"%d:%03d" % (p, i))
            consumer.join(30)
        finally:
            for pub in pubs:
                pub.close()
    assert len(received) == 300
    for p in range(3):
        mine = [m for m in received if m.startswith(b"%d:" % p)]
        assert mine == [b"%d:%03d" % (p, i) for i in range(100)]


def test_ipc_endpoint(ipc_endpoint: str) -> None:
    with ZeroMQPublisher(ipc_endpoint) as pub:
        assert pub.endpoint == ipc_endpoint
        with ZeroMQSubscriber(ipc_endpoint, topic="t") as sub:
            pub.wait_for_subscribers("t")
            sent = [b"ipc-%d" % i for i in range(50)]
            for message in sent:
                pub.send("t", message)
            assert [sub.receive(5) for _ in sent] == sent


def test_forwarder_n_to_n() -> None:
    with ZeroMQForwarder("tcp://127.0.0.1:*", "tcp://127.0.0.1:*") as forwarder:
        pubs = [ZeroMQPublisher(forwarder.frontend, bind=False) for _ in range(2)]
        subs: list[ZeroMQSubscriber] = []
        try:
            # Connect subscribers one by one once the publishers' pipes exist,
            # so every subscription reaches every publisher and counts.
            for n in (1, 2):
                subs.append(ZeroMQSubscriber(forwarder.backend, topic="t"))
                for pub in pubs:
                    assert pub.wait_for_subscribers("t", n) >= n
            for i in range(50):
                for p, pub in enumerate(pubs):
                    pub.send("t", b"%d:%02d" % (p, i))
                    pub.send("other", b"no")
            for sub in subs:
                received = [sub.receive(5) for _ in range(100)]
                for p in range(2):
                    mine = [m for m in received if m.startswith(b"%d:" % p)]
                    assert mine == [b"%d:%02d" % (p, i) for i in range(50)]
                assert drain(sub) == []
        finally:
            for endpoint in [*subs, *pubs]:
                endpoint.close()
    forwarder.stop()  # idempotent


def test_large_frames_arrive_intact_and_mutable_buffers_are_copied() -> None:
    with ZeroMQPublisher(LOCAL, 0) as pub, ZeroMQSubscriber(pub.endpoint, topic="big") as sub:
        pub.wait_for_subscribers("big")
        assert pub._socket.copy_threshold == DEFAULT_ZERO_COPY_THRESHOLD
        sent = [os.urandom(size) for size in (16 * 1024, 1 << 20, 8 << 20)]
        for message in sent:
            pub.send("big", message)
        # A mutable buffer is copied: changing it after send changes nothing.
        buffer = bytearray(b"a" * (1 << 20))
        pub.send("big", buffer)  # type: ignore[arg-type]
        buffer[:] = b"b" * (1 << 20)
        assert [sub.receive(10) for _ in sent] == sent
        assert sub.receive(10) == b"a" * (1 << 20)


@pytest.mark.parametrize("threshold", [None, 1234])
def test_zero_copy_threshold_reaches_every_sending_socket(threshold: int | None) -> None:
    # pyzmq keeps copy_threshold per Socket object: the async publisher's
    # direct (shadow) socket needs it set too, or pyzmq's 64 KiB applies.
    kwargs = {} if threshold is None else {"zero_copy_threshold": threshold}
    expected = DEFAULT_ZERO_COPY_THRESHOLD if threshold is None else threshold
    with ZeroMQPublisher(LOCAL, 0, **kwargs) as pub:
        assert pub._socket.copy_threshold == expected
        assert pub.detach_threshold == DETACH_THRESHOLD
    if threshold is None:  # async: its own default (it copies on the event loop)
        expected = DEFAULT_ASYNC_ZERO_COPY_THRESHOLD

    async def main() -> tuple[int, int, int]:
        async with AsyncZeroMQPublisher(LOCAL, 0, **kwargs) as apub:
            return (
                apub._socket.copy_threshold,
                apub._direct.copy_threshold,
                apub.detach_threshold,
            )

    assert asyncio.run(main()) == (expected, expected, DETACH_THRESHOLD)


def test_hwm_and_pass_through_options_reach_the_socket() -> None:
    with ZeroMQPublisher(LOCAL, 0, sndhwm=1234, sndbuf=1 << 20) as pub:
        assert pub._socket.getsockopt(zmq.SNDHWM) == 1234
        assert pub._socket.getsockopt(zmq.SNDBUF) == 1 << 20
        with ZeroMQSubscriber(pub.endpoint, rcvhwm=4321, maxmsgsize=1 << 30) as sub:
            assert sub._socket.getsockopt(zmq.RCVHWM) == 4321
            assert sub._socket.getsockopt(zmq.MAXMSGSIZE) == 1 << 30
    with ZeroMQPublisher(LOCAL, 0) as pub, ZeroMQSubscriber(pub.endpoint) as sub:
        assert pub._socket.getsockopt(zmq.SNDHWM) == DEFAULT_HWM
        assert sub._socket.getsockopt(zmq.RCVHWM) == DEFAULT_HWM


def test_no_loss_for_20000_messages_of_10_kib_with_a_consumer_keeping_up() -> None:
    count, message = 20_000, b"x" * (10 * 1024)
    with ZeroMQPublisher(LOCAL, 0) as pub, ZeroMQSubscriber(pub.endpoint, topic="load") as sub:
        pub.wait_for_subscribers("load")
        received: list[int] = []

        def consume() -> None:
            for _ in range(count):
                try:
                    received.append(int(sub.receive(10)[:8]))
                except StreamTimeoutError:
                    return

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        start = time.monotonic()
        for i in range(count):
            pub.send("load", b"%08d" % i + message[8:])
        consumer.join(60)
        assert not consumer.is_alive()
        assert time.monotonic() - start < 60
    assert received == list(range(count))


def test_publisher_drops_silently_at_hwm_and_never_blocks() -> None:
    with (
        ZeroMQPublisher(LOCAL, 0, sndhwm=10) as pub,
        ZeroMQSubscriber(pub.endpoint, topic="t", rcvhwm=10) as sub,
    ):
        pub.wait_for_subscribers("t")
        start = time.monotonic()
        for i in range(10_000):  # 100 MB: far beyond queues and TCP buffers
            pub.send("t", b"%08d" % i + b"x" * 10_232)
        assert time.monotonic() - start < 30
        received = drain(sub, quiet=0.5)
    assert 0 < len(received) < 10_000
    numbers = [int(m[:8]) for m in received]
    assert numbers == sorted(numbers)


def test_close_with_unsent_messages_is_bounded() -> None:
    pub = ZeroMQPublisher(LOCAL, 0, sndhwm=0, linger=0.5)
    sub = ZeroMQSubscriber(pub.endpoint, topic="t", rcvhwm=1)
    try:
        pub.wait_for_subscribers("t")
        for _ in range(500):  # 32 MB, never read: most stays queued
            pub.send("t", b"x" * 65536)
        start = time.monotonic()
        pub.close()
        assert time.monotonic() - start < 2.5
        pub.close()
    finally:
        sub.close()
    # A publisher aimed at nobody closes at once.
    lonely = ZeroMQPublisher(LOCAL, 1, bind=False)
    for _ in range(100):
        lonely.send("t", b"x")
    start = time.monotonic()
    lonely.close()
    assert time.monotonic() - start < 1.5


def test_subscriber_count_is_live_and_wait_times_out() -> None:
    with ZeroMQPublisher(LOCAL, 0) as pub:
        sub = ZeroMQSubscriber(pub.endpoint, topic="t")
        assert pub.wait_for_subscribers("t") == 1
        sub.close()
        deadline = time.monotonic() + 10
        while pub.subscriber_count("t") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pub.subscriber_count("t") == 0
        start = time.monotonic()
        with pytest.raises(StreamTimeoutError, match="0 of 1"):
            pub.wait_for_subscribers("t", timeout=0.3)
        assert 0.25 < time.monotonic() - start < 5


def test_close_from_another_thread_ends_receive_within_half_a_second() -> None:
    with ZeroMQSubscriber(LOCAL, 0, topic="t", bind=True) as sub:
        outcome: list[BaseException] = []
        started = threading.Event()

        def block() -> None:
            started.set()
            try:
                sub.receive()
            except BaseException as exc:  # recorded for the assert
                outcome.append(exc)

        thread = threading.Thread(target=block, daemon=True)
        thread.start()
        assert started.wait(5)
        time.sleep(0.05)  # let it reach its poll
        start = time.monotonic()
        sub.close()
        thread.join(5)
        assert time.monotonic() - start < 0.5
        assert len(outcome) == 1
        assert isinstance(outcome[0], SubscriberClosedError)
        assert sub._socket.closed


def test_malformed_message_from_a_foreign_publisher() -> None:
    with ZeroMQSubscriber(LOCAL, 0, bind=True) as sub:
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.PUB)
        try:
            raw.connect(sub.endpoint)
            # Resend until the connection is up (PUB drops until then).
            errors: list[MalformedMessageError] = []
            deadline = time.monotonic() + 10
            while not errors and time.monotonic() < deadline:
                raw.send(b"single frame")
                try:
                    sub.receive(0.05)
                except StreamTimeoutError:
                    continue
                except MalformedMessageError as exc:
                    errors.append(exc)
            assert errors
            assert "no NUL-terminated topic" in str(errors[0])
        finally:
            raw.close(linger=0)


def test_async_receive_cancellation_loses_nothing() -> None:
    async def main() -> list[bytes]:
        pub = AsyncZeroMQPublisher(LOCAL, 0)
        sub = AsyncZeroMQSubscriber(pub.endpoint, topic="t")
        try:
            await pub.wait_for_subscribers("t")
            sent = [b"m%03d" % i for i in range(200)]
            received: list[bytes] = []

            async def produce() -> None:
                for message in sent:
                    await pub.send("t", message)
                    await asyncio.sleep(0)

            producer = asyncio.create_task(produce())
            deadline = time.monotonic() + 30
            while len(received) < len(sent) and time.monotonic() < deadline:
                # Cancels the inner receive over and over mid-wait.
                with contextlib.suppress(TimeoutError):
                    received.append(await asyncio.wait_for(sub.receive(), 0.001))
            await producer
            assert received == sent
            return received
        finally:
            await sub.close()
            await pub.close()

    assert len(asyncio.run(main())) == 200


def test_async_close_ends_pending_receive() -> None:
    async def main() -> None:
        async with AsyncZeroMQSubscriber(LOCAL, 0, topic="t", bind=True) as sub:
            task = asyncio.create_task(sub.receive())
            await asyncio.sleep(0.05)
            start = time.monotonic()
            await sub.close()
            with pytest.raises(SubscriberClosedError):
                await asyncio.wait_for(task, 2)
            assert time.monotonic() - start < 0.5
            assert sub._socket.closed
            assert [m async for m in sub] == []

    asyncio.run(main())


def test_async_receive_waits_on_the_socket_descriptor_and_lets_go_of_it() -> None:
    """A waiting receive watches the socket's descriptor itself, once, and not after it returns."""

    async def main() -> tuple[list[int], bytes, int, int]:
        async with (
            AsyncZeroMQPublisher(LOCAL, 0) as pub,
            AsyncZeroMQSubscriber(pub.endpoint, topic="t") as sub,
        ):
            await pub.wait_for_subscribers("t")
            fd = sub._fd
            waiting = asyncio.create_task(sub.receive(10))
            watching = []
            for _ in range(200):  # until the receive waits (bounded: 200 turns of the loop)
                await asyncio.sleep(0)
                watching.append(watchers(fd))
                if watching[-1]:
                    break
            await pub.send("t", b"woken")
            message = await asyncio.wait_for(waiting, 5)
            after_message = watchers(fd)
            with pytest.raises(StreamTimeoutError):
                await sub.receive(0.05)
            return watching, message, after_message, watchers(fd)

    watching, message, after_message, after_timeout = asyncio.run(main())
    assert watching[-1] == 1
    assert message == b"woken"
    assert (after_message, after_timeout) == (0, 0)


def test_bench_target_ours_and_bare_100_messages() -> None:
    publisher, subscriber = open_endpoints("zmq", "bench-test")
    try:
        # One context (one I/O thread) for both, as bare pyzmq has: a second
        # one cost about a third more CPU per 1 MiB message on 2 cores.
        assert publisher._socket.context is subscriber._socket.context
        sent = [b"ours-%d" % i for i in range(100)]
        for message in sent:
            publisher.send("bench-test", message)
        assert [subscriber.receive(10) for _ in sent] == sent
    finally:
        subscriber.close()
        publisher.close()
    bare = open_bare("zmq", "bench-test")
    try:
        sent = [b"bare-%d" % i for i in range(100)]
        for message in sent:
            bare.send(message)
        bare.flush()
        assert [bare.receive() for _ in sent] == sent
    finally:
        bare.close()
    with pytest.raises(ValueError, match="name"):
        open_endpoints("redis", "t")


def test_async_bench_target_100_messages_in_order() -> None:
    async def main() -> list[bytes]:
        publisher, subscriber = await open_async_endpoints("zmq", "bench-async")
        try:
            assert publisher._socket.context is subscriber._socket.context
            sent = [b"async-%d" % i for i in range(100)]
            for message in sent:
                await publisher.send("bench-async", message)
            return [await subscriber.receive(10) for _ in sent]
        finally:
            await subscriber.close()
            await publisher.close()

    assert asyncio.run(main()) == [b"async-%d" % i for i in range(100)]
    with pytest.raises(ValueError, match="name"):
        asyncio.run(open_async_endpoints("redis", "t"))


def test_async_send_waits_for_room_under_xpub_nodrop_and_keeps_order() -> None:
    # With xpub_nodrop a full queue makes send wait (the awaitable path)
    # instead of dropping; every message must still arrive, in order.
    async def main() -> tuple[int, list[int]]:
        pub = AsyncZeroMQPublisher(LOCAL, 0, sndhwm=4, xpub_nodrop=True)
        sub = AsyncZeroMQSubscriber(pub.endpoint, topic="t", rcvhwm=4)
        try:
            await pub.wait_for_subscribers("t")
            body = b"x" * 65_528
            sent = 0
            for i in range(2_000):  # 128 MB at most: beyond HWMs and TCP buffers
                try:
                    await asyncio.wait_for(pub.send("t", b"%08d" % i + body), 0.5)
                except TimeoutError:
                    break
                sent += 1
            assert 0 < sent < 2_000, "send never waited for room"
            # The send that timed out was cancelled; the next ones go through
            # once the subscriber reads.
            reader = asyncio.create_task(_receive_numbers(sub, sent + 3))
            for i in range(sent + 1, sent + 3):
                await asyncio.wait_for(pub.send("t", b"%08d" % i + body), 30)
            return sent, await asyncio.wait_for(reader, 60)
        finally:
            await sub.close()
            await pub.close()

    sent, numbers = asyncio.run(main())
    # Nothing dropped, nothing reordered; the send cancelled by the timeout
    # (number `sent`) either went out whole or not at all.
    assert numbers in ([*range(sent), sent + 1, sent + 2], list(range(sent + 3)))


def test_async_publisher_burst_lets_other_tasks_run_and_loses_nothing() -> None:
    # XPUB sends never suspend; the publisher yields every 1,024 messages or
    # 1 MiB, so a task on the same loop runs during a burst.
    async def main() -> tuple[int, int, list[int]]:
        pub = AsyncZeroMQPublisher(LOCAL, 0)
        sub = AsyncZeroMQSubscriber(pub.endpoint, topic="t")
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        try:
            await pub.wait_for_subscribers("t")
            task = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            start = ticks
            for i in range(5 * 1024):  # 5,120 small messages: at least 4 yields
                await pub.send("t", b"%08d" % i)
            small = ticks - start
            start = ticks
            for i in range(8):  # 8 MiB: at least 7 yields
                await pub.send("t", b"%08d" % (5 * 1024 + i) + bytes((1 << 20) - 8))
            large = ticks - start
            done = True
            await task
            numbers = await _receive_numbers(sub, 5 * 1024 + 8)
            return small, large, numbers
        finally:
            await sub.close()
            await pub.close()

    small, large, numbers = asyncio.run(main())
    assert small >= 4
    assert large >= 7
    assert numbers == list(range(5 * 1024 + 8))


async def _receive_numbers(sub: AsyncZeroMQSubscriber, most: int) -> list[int]:
    """Sequence numbers of what arrives until 2 s of quiet (`most` at most)."""
    numbers = []
    for _ in range(most):
        try:
            numbers.append(int((await sub.receive(2))[:8]))
        except StreamTimeoutError:
            break
    return numbers


def test_missing_pyzmq_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['zmq'] = None\n"
        "try:\n"
        "    import proxystore_stream.shims.zmq\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "MissingDependencyError" in result.stdout
    assert "[zmq]" in result.stdout
