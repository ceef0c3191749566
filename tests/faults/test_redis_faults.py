"""Fault tests for the Redis shims against a private redis-server.

Every test counts its messages (sent, received, lost, duplicated) by event
id (`StreamConsumer.last_event_id`) and by the integer each object is, and
asserts the promise of docs/shims/redis.md:

- a: a consumer killed with SIGKILL mid-stream and restarted under the same
  name loses nothing; at most the one message handed but not acknowledged
  comes twice (list queue and Streams).
- b: Redis restarted mid-stream: producer and consumer reconnect by
  themselves and nothing is lost; duplicates at most one per reconnect of
  the list-queue consumer plus one per retried send.
- c: Redis down for good: publishers and subscribers raise
  `BrokerConnectionError` once their policy's deadline has passed.
- d: pub/sub: by default the subscriber raises on a restart; with `retry=`
  it resubscribes and receives everything sent after it is back.

Each test prints a ``FAULT-ROW`` line (``pytest -s``) for the fault table.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis")

from proxystore_stream import AsyncStreamConsumer
from proxystore_stream import AsyncStreamProducer
from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims import redis as shims
from tests.conftest import free_port
from tests.faults.redis_server import HOST
from tests.faults.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
BOUND = 30.0
"""Seconds any wait in these tests may take at most."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    made = RedisServer(tmp_path / "redis")
    made.start()
    try:
        yield made
    finally:
        made.stop(signal.SIGKILL)


def topic_name() -> str:
    return f"pss-fault-{uuid.uuid4().hex[:8]}"


def row(fault: str, sent: int, ids: list[str]) -> tuple[int, int]:
    """Print the fault-table row; return (lost, duplicated)."""
    received = len(set(ids))
    lost = sent - received
    duplicated = len(ids) - received
    print(f"\nFAULT-ROW | {fault} | {sent} | {len(ids)} | {lost} | {duplicated}")
    return lost, duplicated


def wait_until(condition: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def publisher(mode: str, port: int, retry: RetryPolicy | None = None) -> Any:
    cls = {"queue": shims.RedisQueuePublisher, "streams": shims.RedisStreamPublisher}[mode]
    return cls(HOST, port, retry=retry)


def subscriber(mode: str, port: int, topic: str, retry: RetryPolicy | None = None) -> Any:
    if mode == "queue":
        return shims.RedisQueueSubscriber(HOST, port, topic, consumer="c1", retry=retry)
    return shims.RedisStreamSubscriber(
        HOST,
        port,
        topic,
        group="workers",
        consumer="c1",
        retry=retry,
    )


def async_endpoints(mode: str, port: int, topic: str, retry: RetryPolicy) -> tuple[Any, Any]:
    if mode == "queue":
        return (
            shims.AsyncRedisQueuePublisher(HOST, port, retry=retry),
            shims.AsyncRedisQueueSubscriber(HOST, port, topic, consumer="c1", retry=retry),
        )
    return (
        shims.AsyncRedisStreamPublisher(HOST, port, retry=retry),
        shims.AsyncRedisStreamSubscriber(
            HOST,
            port,
            topic,
            group="workers",
            consumer="c1",
            retry=retry,
        ),
    )


def assert_nothing_held(server: RedisServer, mode: str, topic: str) -> None:
    """Nothing left unacknowledged in Redis once the stream ended."""
    client = server.client()
    try:
        if mode == "queue":
            assert client.keys(f"{topic}:pss-processing:*") == []
            assert client.llen(topic) == 0
        else:
            assert int(client.xpending(topic, "workers")["pending"]) == 0
    finally:
        client.close()


# --- a: SIGKILL a consumer mid-stream, restart it under the same name -------

CHILD = """
import os, sys, time
from proxystore_stream import StreamConsumer
from proxystore_stream.shims import redis as shims

mode, port, topic, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if mode == "queue":
    sub = shims.RedisQueueSubscriber("127.0.0.1", port, topic, consumer="worker-1")
else:
    sub = shims.RedisStreamSubscriber(
        "127.0.0.1", port, topic, group="workers", consumer="worker-1",
    )
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
with StreamConsumer(sub, timeout=20) as consumer:
    for obj in consumer:
        os.write(fd, b"%s %d\\n" % (consumer.last_event_id.encode(), obj))
        time.sleep(0.002)  # the work
os.write(fd, b"end\\n")
"""


def spawn(mode: str, port: int, topic: str, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(port), topic, str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("mode", ["queue", "streams"])
def test_a_sigkilled_consumer_restarted_under_its_name_loses_nothing(
    server: RedisServer,
    tmp_path: Path,
    mode: str,
) -> None:
    count = 300
    topic = topic_name()
    with StreamProducer[int](publisher(mode, server.port)) as producer:
        for i in range(count):
            producer.send(topic, i)
        producer.close_topics(topic)
    out = tmp_path / "received.txt"

    first = spawn(mode, server.port, topic, out)
    try:
        wait_until(lambda: len(lines(out)) >= count // 3 or first.poll() is not None, "a third")
        assert first.poll() is None, "the consumer ended before it was killed"
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait(BOUND)
    at_kill = len(lines(out))
    assert at_kill < count, "killed too late to be mid-stream"

    second = spawn(mode, server.port, topic, out)
    try:
        assert second.wait(BOUND) == 0
    finally:
        second.kill()
    got = lines(out)
    assert got[-1] == "end"
    assert got.count("end") == 1
    pairs = [line.split() for line in got[:-1]]
    ids = [event_id for event_id, _ in pairs]
    # One event id always means one object.
    assert len({(e, int(n)) for e, n in pairs}) == len(set(ids))
    assert sorted({int(n) for _, n in pairs}) == list(range(count))
    lost, duplicated = row(f"SIGKILL consumer ({mode}), restart same name", count, ids)
    assert lost == 0
    # At most the one message handed but not acknowledged at the kill.
    assert duplicated <= 1
    assert_nothing_held(server, mode, topic)


# --- b: restart Redis mid-stream --------------------------------------------


def _sync_stream(server: RedisServer, mode: str, topic: str, count: int) -> list[str]:
    retry = RetryPolicy(deadline=15.0)
    ids: list[str] = []
    objects: list[int] = []
    errors: list[BaseException] = []
    sub = subscriber(mode, server.port, topic, retry)

    def consume() -> None:
        try:
            with StreamConsumer[int](sub, timeout=BOUND) as consumer:
                for obj in consumer:
                    objects.append(obj)
                    ids.append(consumer.last_event_id or "")
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    def produce() -> None:
        try:
            with StreamProducer[int](publisher(mode, server.port, retry)) as producer:
                for i in range(count):
                    producer.send(topic, i)
                    time.sleep(0.002)
                producer.close_topics(topic)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(objects) >= count // 5 or bool(errors), "a fifth of the stream")
    sent_before = len(objects)
    server.restart()
    for thread in threads:
        thread.join(BOUND)
    assert not any(thread.is_alive() for thread in threads), "the stream did not end"
    assert not errors, errors
    assert sent_before < count - count // 5, "restarted too late to be mid-stream"
    assert sorted(set(objects)) == list(range(count))
    return ids


def _async_stream(server: RedisServer, mode: str, topic: str, count: int) -> list[str]:
    retry = RetryPolicy(deadline=15.0)

    async def main() -> list[str]:
        pub, sub = async_endpoints(mode, server.port, topic, retry)
        ids: list[str] = []
        objects: list[int] = []

        async def consume() -> None:
            async with AsyncStreamConsumer[int](sub, timeout=BOUND) as consumer:
                async for obj in consumer:
                    objects.append(obj)
                    ids.append(consumer.last_event_id or "")

        async def produce() -> None:
            async with AsyncStreamProducer[int](pub) as producer:
                for i in range(count):
                    await producer.send(topic, i)
                    await asyncio.sleep(0.002)
                await producer.close_topics(topic)

        await sub.open()
        tasks = [asyncio.ensure_future(consume()), asyncio.ensure_future(produce())]
        deadline = time.monotonic() + BOUND
        while len(objects) < count // 5 and not any(t.done() for t in tasks):
            assert time.monotonic() < deadline, "timed out waiting for a fifth of the stream"
            await asyncio.sleep(0.01)
        await asyncio.to_thread(server.restart)
        await asyncio.wait_for(asyncio.gather(*tasks), BOUND)
        assert sorted(set(objects)) == list(range(count))
        return ids

    return asyncio.run(main())


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("mode", ["queue", "streams"])
def test_b_redis_restart_mid_stream_loses_nothing(
    server: RedisServer,
    mode: str,
    flavour: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="proxystore_stream.retry")
    count = 500
    topic = topic_name()
    stream = _sync_stream if flavour == "sync" else _async_stream
    ids = stream(server, mode, topic, count)
    lost, duplicated = row(f"Redis restart mid-stream ({mode}, {flavour})", count, ids)
    assert lost == 0
    # Both sides met the outage and retried.
    assert "unreachable" in caplog.text
    # Sends whose replies the restart swallowed are sent again: the publishers
    # pipeline and read a reply at their next send (2 ms later here), so the
    # send whose reply had come but was not read yet and the send in flight
    # (seen once in CI: 2 on streams-async). Queue: also the consumer's
    # message in flight when the connection broke. Streams: only the sends (a
    # reconnected consumer re-sends its XACKs and skips what it holds).
    assert duplicated <= (3 if mode == "queue" else 2)
    if mode == "streams":
        # Every duplicate is an entry stored twice (count objects + 1 end).
        client = server.client()
        try:
            assert duplicated <= client.xlen(topic) - (count + 1)
        finally:
            client.close()
    assert_nothing_held(server, mode, topic)


# --- c: Redis down for good ---------------------------------------------------

DEADLINE = 1.0
SLACK = 1.5


def _timed(operation: Callable[[], Any]) -> float:
    start = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="gave up"):
        operation()
    return time.monotonic() - start


@pytest.mark.parametrize("mode", ["queue", "streams", "pubsub"])
def test_c_redis_down_for_good_raises_after_the_deadline(server: RedisServer, mode: str) -> None:
    retry = RetryPolicy(deadline=DEADLINE)
    topic = topic_name()
    if mode == "pubsub":
        pub: Any = shims.RedisPublisher(HOST, server.port, retry=retry)
        sub: Any = shims.RedisSubscriber(HOST, server.port, topic, retry=retry)
    else:
        pub = publisher(mode, server.port, retry)
        sub = subscriber(mode, server.port, topic, retry)
    try:
        pub.send(topic, b"before")
        assert sub.receive(5) == b"before"
        server.stop(signal.SIGKILL)
        send = _timed(lambda: pub.send(topic, b"while down"))
        # A receive timeout longer than the deadline: the policy decides.
        receive = _timed(lambda: sub.receive(10))
    finally:
        pub.close()
        sub.close()
    assert send < DEADLINE + SLACK
    assert receive < DEADLINE + SLACK
    row(f"Redis down for good ({mode}, sync)", 1, ["before"])


@pytest.mark.parametrize("mode", ["queue", "streams"])
def test_c_async_redis_down_for_good_raises_after_the_deadline(
    server: RedisServer,
    mode: str,
) -> None:
    retry = RetryPolicy(deadline=DEADLINE)
    topic = topic_name()

    async def main() -> tuple[float, float]:
        pub, sub = async_endpoints(mode, server.port, topic, retry)
        await sub.open()
        try:
            await pub.send(topic, b"before")
            assert await sub.receive(5) == b"before"
            await asyncio.to_thread(server.stop, signal.SIGKILL)
            start = time.monotonic()
            with pytest.raises(BrokerConnectionError, match="gave up"):
                await pub.send(topic, b"while down")
            send = time.monotonic() - start
            start = time.monotonic()
            with pytest.raises(BrokerConnectionError, match="gave up"):
                await sub.receive(10)
            return send, time.monotonic() - start
        finally:
            await pub.close()
            await sub.close()

    send, receive = asyncio.run(main())
    assert send < DEADLINE + SLACK
    assert receive < DEADLINE + SLACK
    row(f"Redis down for good ({mode}, async)", 1, ["before"])


@pytest.mark.parametrize("mode", ["queue", "streams"])
def test_c_async_redis_that_stops_answering_raises_after_the_deadline(
    server: RedisServer,
    mode: str,
) -> None:
    # A stopped (SIGSTOP) server still accepts connections but never answers:
    # the round in flight, and each reconnect's handshake, must time out.
    retry = RetryPolicy(deadline=DEADLINE)
    topic = topic_name()
    io_timeout = 0.3

    async def main() -> float:
        pub, _ = async_endpoints(mode, server.port, topic, retry)
        if mode == "queue":
            sub: Any = shims.AsyncRedisQueueSubscriber(
                HOST, server.port, topic, retry=retry, socket_timeout=io_timeout
            )
        else:
            sub = shims.AsyncRedisStreamSubscriber(
                HOST, server.port, topic, group="g", retry=retry, socket_timeout=io_timeout
            )
        await sub.open()
        try:
            await pub.send(topic, b"before")
            await pub.flush()
            assert await sub.receive(5) == b"before"
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            start = time.monotonic()
            with pytest.raises(BrokerConnectionError, match="gave up"):
                await sub.receive(30)
            return time.monotonic() - start
        finally:
            assert server.process is not None
            server.process.send_signal(signal.SIGCONT)
            await pub.close()
            await sub.close()

    receive = asyncio.run(main())
    assert receive < io_timeout + DEADLINE + SLACK
    row(f"Redis stops answering ({mode}, async)", 1, ["before"])


def test_c_a_subscriber_that_cannot_connect_raises_after_the_deadline() -> None:
    port = free_port()  # nobody listens there
    start = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="gave up"):
        shims.RedisQueueSubscriber(HOST, port, "t", retry=RetryPolicy(deadline=DEADLINE))
    assert time.monotonic() - start < DEADLINE + SLACK


# --- d: pub/sub across a restart ------------------------------------------------


def test_d_pubsub_subscriber_raises_on_restart_by_default(server: RedisServer) -> None:
    topic = topic_name()
    with (
        shims.RedisPublisher(HOST, server.port) as pub,
        shims.RedisSubscriber(HOST, server.port, topic) as sub,
    ):
        for i in range(10):
            pub.send(topic, b"%d" % i)
        got = [sub.receive(5) for _ in range(10)]
        assert got == [b"%d" % i for i in range(10)]
        server.restart()
        with pytest.raises(BrokerConnectionError, match="lost"):
            sub.receive(5)
        # The publisher reconnects by itself; the subscriber keeps raising.
        pub.send(topic, b"after")
        with pytest.raises(BrokerConnectionError):
            sub.receive(1)
    row("Redis restart, pub/sub subscriber default (raises)", 10, [str(i) for i in range(10)])


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_d_pubsub_subscriber_with_retry_resubscribes(
    server: RedisServer,
    flavour: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="proxystore_stream.shims.redis.pubsub")
    topic = topic_name()
    retry = RetryPolicy(deadline=10.0)
    if flavour == "sync":
        probes, received = _pubsub_restart_sync(server, topic, retry)
    else:
        probes, received = asyncio.run(_pubsub_restart_async(server, topic, retry))
    assert received[:BEFORE] == [b"%d" % i for i in range(BEFORE)]
    # Probes sent while it was away are missed; once one arrived, nothing is.
    assert received[BEFORE].startswith(b"probe-")
    afterwards = [m for m in received[BEFORE:] if not m.startswith(b"probe-")]
    assert afterwards == [b"after-%d" % i for i in range(AFTER)]
    assert "were missed" in caplog.text
    ids = [m.decode() for m in received]
    lost, duplicated = row(
        f"Redis restart, pub/sub subscriber retry= ({flavour})",
        BEFORE + probes + AFTER,
        ids,
    )
    assert duplicated == 0
    assert lost < probes  # only probes, sent while it was resubscribing


BEFORE, AFTER = 10, 50


def _done(received: list[bytes]) -> bool:
    return bool(received) and received[-1] == b"after-%d" % (AFTER - 1)


def _pubsub_restart_sync(
    server: RedisServer,
    topic: str,
    retry: RetryPolicy,
) -> tuple[int, list[bytes]]:
    with (
        shims.RedisPublisher(HOST, server.port, retry=retry) as pub,
        shims.RedisSubscriber(HOST, server.port, topic, retry=retry) as sub,
    ):
        for i in range(BEFORE):
            pub.send(topic, b"%d" % i)
        received = [sub.receive(5) for _ in range(BEFORE)]
        server.restart()
        probes = 0
        deadline = time.monotonic() + BOUND
        while len(received) == BEFORE:
            assert time.monotonic() < deadline, "the subscriber never came back"
            pub.send(topic, b"probe-%d" % probes)
            probes += 1
            try:
                received.append(sub.receive(0.2))
            except StreamTimeoutError:
                continue
        for i in range(AFTER):
            pub.send(topic, b"after-%d" % i)
        for _ in range(AFTER + probes):
            if _done(received):
                break
            received.append(sub.receive(5))
    return probes, received


async def _pubsub_restart_async(
    server: RedisServer,
    topic: str,
    retry: RetryPolicy,
) -> tuple[int, list[bytes]]:
    pub = shims.AsyncRedisPublisher(HOST, server.port, retry=retry)
    sub = shims.AsyncRedisSubscriber(HOST, server.port, topic, retry=retry)
    await sub.open()
    try:
        for i in range(BEFORE):
            await pub.send(topic, b"%d" % i)
        received = [await sub.receive(5) for _ in range(BEFORE)]
        await asyncio.to_thread(server.restart)
        probes = 0
        deadline = time.monotonic() + BOUND
        while len(received) == BEFORE:
            assert time.monotonic() < deadline, "the subscriber never came back"
            await pub.send(topic, b"probe-%d" % probes)
            probes += 1
            try:
                received.append(await sub.receive(0.2))
            except StreamTimeoutError:
                continue
        for i in range(AFTER):
            await pub.send(topic, b"after-%d" % i)
        for _ in range(AFTER + probes):
            if _done(received):
                break
            received.append(await sub.receive(5))
    finally:
        await pub.close()
        await sub.close()
    return probes, received
