"""Redis-specific behaviour: patterns, Streams groups and acks, lag, pass-through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from proxystore_stream._buffers import PAGE_OFFSET
from proxystore_stream._buffers import page_offset
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import BufferFullError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.retry import RetryPolicy
from tests.conftest import REQUIRE_BROKERS
from tests.conftest import free_port
from tests.conftest import port_open
from tests.faults.redis_server import RedisServer

redis = pytest.importorskip("redis")

from proxystore_stream.shims.redis import AsyncRedisPublisher  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisQueuePublisher  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisQueueSubscriber  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisStreamPublisher  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisStreamSubscriber  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisSubscriber  # noqa: E402
from proxystore_stream.shims.redis import RedisPublisher  # noqa: E402
from proxystore_stream.shims.redis import RedisQueuePublisher  # noqa: E402
from proxystore_stream.shims.redis import RedisQueueSubscriber  # noqa: E402
from proxystore_stream.shims.redis import RedisStreamPublisher  # noqa: E402
from proxystore_stream.shims.redis import RedisStreamSubscriber  # noqa: E402
from proxystore_stream.shims.redis import RedisSubscriber  # noqa: E402
from proxystore_stream.shims.redis._common import READER_BUFFER  # noqa: E402
from proxystore_stream.shims.redis._common import roundtrip  # noqa: E402
from proxystore_stream.shims.redis._common import url_arguments  # noqa: E402

HOST, PORT = "127.0.0.1", 6379
MiB = 1024 * 1024


def name() -> str:
    return f"pss-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def topic(raw: Any) -> Iterator[str]:
    made = name()
    yield made
    raw.delete(made)


def pending(raw: Any, topic: str, group: str) -> int:
    return int(raw.xpending(topic, group)["pending"])


# --- pub/sub -----------------------------------------------------------------


def test_glob_patterns_are_detected_and_can_be_forced_off(raw: Any) -> None:
    base = name()
    with (
        RedisPublisher(HOST, PORT) as pub,
        RedisSubscriber(HOST, PORT, f"{base}.*") as globbed,
        RedisSubscriber(HOST, PORT, f"{base}.*", pattern=False) as literal,
        RedisSubscriber(HOST, PORT, [f"{base}.a"], pattern=True) as forced,
    ):
        pub.send(f"{base}.a", b"a")
        pub.send(f"{base}x", b"not matched: the dot is literal")
        pub.send(f"{base}.b", b"b")
        pub.send(f"{base}.*", b"star")
        assert [globbed.receive(5) for _ in range(3)] == [b"a", b"b", b"star"]
        assert literal.receive(5) == b"star"
        assert forced.receive(5) == b"a"
        for sub in (globbed, literal, forced):
            with pytest.raises(StreamTimeoutError):
                sub.receive(0.2)


def test_channel_and_pattern_in_one_subscriber(raw: Any) -> None:
    base = name()
    with (
        RedisPublisher(HOST, PORT) as pub,
        RedisSubscriber(HOST, PORT, [f"{base}-exact", f"{base}.?"]) as sub,
    ):
        pub.send(f"{base}.1", b"p")
        pub.send(f"{base}-exact", b"c")
        pub.send(f"{base}.12", b"not matched")
        assert [sub.receive(5), sub.receive(5)] == [b"p", b"c"]
        with pytest.raises(StreamTimeoutError):
            sub.receive(0.2)


@pytest.fixture
def tiny_redis() -> Iterator[int]:
    """A private redis-server whose pub/sub output buffer limit is 1 MiB."""
    server = shutil.which("redis-server")
    if server is None:
        if REQUIRE_BROKERS:
            pytest.fail("redis-server is not installed", pytrace=False)
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--client-output-buffer-limit",
            "pubsub 1mb 256kb 1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open(HOST, port, timeout=0.2):
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _flood(port: int, topic: str, count: int) -> list[bytes]:
    sent = [bytes([i]) * MiB for i in range(count)]
    with RedisPublisher(HOST, port) as pub:
        for message in sent:
            pub.send(topic, message)
    return sent


def _receive_until_error(sub: Any, most: int) -> tuple[list[bytes], BaseException | None]:
    received: list[bytes] = []
    for _ in range(most):
        try:
            received.append(sub.receive(5))
        except BrokerConnectionError as exc:
            return received, exc
    return received, None


def test_lagging_subscriber_raises_instead_of_losing_silently(tiny_redis: int) -> None:
    topic = name()
    with RedisSubscriber(HOST, tiny_redis, topic) as sub:
        sent = _flood(tiny_redis, topic, 30)
        received, error = _receive_until_error(sub, len(sent) + 1)
        assert isinstance(error, BrokerConnectionError), "the gap went unnoticed"
        assert "lag" in str(error)
        assert "Store" in str(error)
        assert len(received) < len(sent)
        assert received == sent[: len(received)]
        with pytest.raises(BrokerConnectionError):
            sub.receive(1)


def test_lagging_subscriber_with_retry_resubscribes_and_warns(
    tiny_redis: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = name()
    caplog.set_level(logging.WARNING, logger="proxystore_stream.shims.redis.pubsub")
    with RedisSubscriber(HOST, tiny_redis, topic, retry=RetryPolicy(deadline=5)) as sub:
        sent = _flood(tiny_redis, topic, 30)
        received: list[bytes] = []
        for _ in range(len(sent) + 1):
            try:
                received.append(sub.receive(1))
            except StreamTimeoutError:
                break
        assert len(received) < len(sent)
        assert received == sent[: len(received)]
        assert "were missed" in caplog.text
        with RedisPublisher(HOST, tiny_redis) as pub:
            pub.send(topic, b"after")
        assert sub.receive(5) == b"after"


@pytest.mark.parametrize("retry", [None, RetryPolicy(deadline=5)], ids=["default", "retry"])
def test_async_lagging_subscriber(
    tiny_redis: int,
    retry: RetryPolicy | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="proxystore_stream.shims.redis.pubsub")

    async def main() -> tuple[list[bytes], list[bytes], BaseException | None, bytes | None]:
        topic = name()
        sub = AsyncRedisSubscriber(HOST, tiny_redis, topic, retry=retry)
        await sub.open()
        try:
            sent = await asyncio.to_thread(_flood, tiny_redis, topic, 30)
            received: list[bytes] = []
            for _ in range(len(sent) + 1):
                try:
                    received.append(await sub.receive(1))
                except (BrokerConnectionError, StreamTimeoutError) as exc:
                    if isinstance(exc, BrokerConnectionError):
                        return sent, received, exc, None
                    break
            await asyncio.to_thread(_flood, tiny_redis, topic, 0)
            async with AsyncRedisPublisher(HOST, tiny_redis) as pub:
                await pub.send(topic, b"after")
            return sent, received, None, await sub.receive(5)
        finally:
            await sub.close()

    sent, received, error, after = asyncio.run(main())
    assert len(received) < len(sent)
    assert received == sent[: len(received)]
    if retry is None:
        assert isinstance(error, BrokerConnectionError), "the gap went unnoticed"
        assert "lag" in str(error)
    else:
        assert error is None
        assert after == b"after"
        assert "were missed" in caplog.text


def test_redis_py_retry_objects_are_refused(raw: Any) -> None:
    with pytest.raises(TypeError, match="RetryPolicy"):
        RedisSubscriber(HOST, PORT, "t", retry=redis.retry.Retry(redis.backoff.NoBackoff(), 3))
    with pytest.raises(TypeError, match="RetryPolicy"):
        RedisQueuePublisher(HOST, PORT, retry=3)  # type: ignore[arg-type]


# --- list queue --------------------------------------------------------------


def test_queue_is_fifo_and_shared_between_subscribers(topic: str) -> None:
    with (
        RedisQueuePublisher(HOST, PORT) as pub,
        RedisQueueSubscriber(HOST, PORT, topic) as a,
        RedisQueueSubscriber(HOST, PORT, topic) as b,
    ):
        for i in range(6):
            pub.send(topic, b"%d" % i)
        got = [a.receive(5), b.receive(5), a.receive(5), b.receive(5), a.receive(5)]
        assert got == [b"%d" % i for i in range(5)]
        assert b.receive(5) == b"5"


def test_queue_iteration_timeout(topic: str) -> None:
    with RedisQueueSubscriber(HOST, PORT, topic, timeout=0.2) as sub:
        start = time.monotonic()
        with pytest.raises(StreamTimeoutError):
            next(iter(sub))
        assert time.monotonic() - start < 5


def test_async_queue_cancelled_receive_loses_nothing(raw: Any, topic: str) -> None:
    async def main() -> bytes:
        sub = AsyncRedisQueueSubscriber(HOST, PORT, topic)
        await sub.open()
        try:
            task = asyncio.ensure_future(sub.receive())
            await asyncio.sleep(0.05)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raw.lpush(topic, b"after cancel")
            got = await sub.receive(5)
            await sub.ack()
            return got
        finally:
            await sub.close()

    assert asyncio.run(main()) == b"after cancel"
    assert raw.llen(topic) == 0
    assert raw.keys(f"{topic}:*") == []


@pytest.mark.parametrize("mode", ["queue", "stream"])
def test_async_timed_out_receives_keep_the_connection(raw: Any, topic: str, mode: str) -> None:
    # A receive that times out mid-round leaves the round in flight: no
    # reconnect, and the message that round moves is the next one handed.
    async def main() -> tuple[list[bytes], int]:
        sub: Any
        if mode == "queue":
            sub = AsyncRedisQueueSubscriber(HOST, PORT, topic)
        else:
            sub = AsyncRedisStreamSubscriber(HOST, PORT, topic, group="g", prefetch=1)
        await sub.open()

        def send(message: bytes) -> None:
            if mode == "queue":
                raw.lpush(topic, message)
            else:
                raw.xadd(topic, {"data": message})

        got = []
        try:
            send(b"first")  # the subscriber's own connection is open after it
            assert await sub.receive(5) == b"first"
            before = raw.info("stats")["total_connections_received"]
            for i in range(10):
                with pytest.raises(StreamTimeoutError):
                    await sub.receive(0.01)
                send(b"m%d" % i)
                got.append(await sub.receive(5))
            opened = raw.info("stats")["total_connections_received"] - before
        finally:
            await sub.close()
        return got, opened

    got, opened = asyncio.run(main())
    assert got == [b"m%d" % i for i in range(10)]
    assert opened == 0


def test_async_queue_close_pushes_an_orphaned_pop_back(raw: Any, topic: str) -> None:
    async def main() -> bool:
        sub = AsyncRedisQueueSubscriber(HOST, PORT, topic)
        await sub.open()
        try:
            for _ in range(20):
                with pytest.raises(StreamTimeoutError):
                    await sub.receive(0)  # leaves its BRPOP round running
                if not sub._rounds.busy:
                    continue
                raw.lpush(topic, b"orphan")
                deadline = time.monotonic() + 2
                while raw.llen(topic) and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                if raw.llen(topic) == 0:
                    return True  # popped by the round nobody waits for
                raw.delete(topic)
            return False
        finally:
            await sub.close()

    assert asyncio.run(main()), "could not leave a pop without a caller"
    assert raw.lrange(topic, 0, -1) == [b"orphan"]


def processing(raw: Any, topic: str, consumer: str) -> list[bytes]:
    return list(raw.lrange(f"{topic}:pss-processing:{consumer}", 0, -1))


def test_queue_acks_on_next_receive_and_on_ack(raw: Any, topic: str) -> None:
    raw.lpush(topic, b"a", b"b", b"c")
    with RedisQueueSubscriber(HOST, PORT, topic, consumer="w") as sub:
        assert sub.consumer == "w"
        assert sub.receive(5) == b"a"
        assert processing(raw, topic, "w") == [b"a"]
        assert raw.lrange(topic, 0, -1) == [b"c", b"b"]
        assert sub.receive(5) == b"b"  # acknowledges a
        assert processing(raw, topic, "w") == [b"b"]
        sub.ack()
        assert processing(raw, topic, "w") == []
        sub.ack()  # nothing handed: nothing trimmed
        assert sub.receive(5) == b"c"
        assert processing(raw, topic, "w") == [b"c"]
    # close() gives the unacknowledged message back to the head of the list.
    assert raw.lrange(topic, 0, -1) == [b"c"]
    assert processing(raw, topic, "w") == []


def test_queue_restart_with_the_same_name_redelivers_first(raw: Any, topic: str) -> None:
    # A subscriber that died holding two messages: one handed, one moved.
    key = f"{topic}:pss-processing:w"
    raw.rpush(key, b"moved", b"handed")  # newest left, oldest right
    raw.lpush(topic, b"new")
    with RedisQueueSubscriber(HOST, PORT, topic, consumer="w") as sub:
        assert sub.receive(5) == b"handed"
        assert sub.receive(5) == b"moved"
        assert raw.lrange(key, 0, -1) == [b"moved"]
        assert sub.receive(5) == b"new"
        assert raw.lrange(key, 0, -1) == [b"new"]
        sub.ack()
        assert raw.exists(key) == 0
    with (
        RedisQueueSubscriber(HOST, PORT, topic, consumer="other") as other,
        pytest.raises(StreamTimeoutError),
    ):
        other.receive(0.2)


def test_queue_several_topics_in_priority_order(raw: Any, topic: str) -> None:
    second = topic + "-second"
    raw.lpush(second, b"s1")
    raw.lpush(topic, b"f1", b"f2")
    try:
        with RedisQueueSubscriber(HOST, PORT, [topic, second], consumer="w") as sub:
            assert [sub.receive(5) for _ in range(3)] == [b"f1", b"f2", b"s1"]
            assert processing(raw, second, "w") == [b"s1"]
            assert processing(raw, topic, "w") == []
            # Blocking on an idle second topic still wakes up.
            start = time.monotonic()
            raw.lpush(second, b"s2")
            assert sub.receive(5) == b"s2"
            assert time.monotonic() - start < 1
            assert processing(raw, second, "w") == [b"s2"]
        assert raw.lrange(second, 0, -1) == [b"s2"]
    finally:
        raw.delete(second, f"{second}:pss-processing:w")


def test_queue_close_gives_back_in_order(raw: Any, topic: str) -> None:
    key = f"{topic}:pss-processing:w"
    raw.rpush(key, b"3", b"2", b"1")  # three held by a dead "w"
    raw.lpush(topic, b"4")
    sub = RedisQueueSubscriber(HOST, PORT, topic, consumer="w")
    assert sub.receive(5) == b"1"
    sub.close()
    assert raw.exists(key) == 0
    with RedisQueueSubscriber(HOST, PORT, topic) as other:
        assert [other.receive(5) for _ in range(4)] == [b"1", b"2", b"3", b"4"]
        other.ack()


def test_async_queue_acks_and_redelivers(raw: Any, topic: str) -> None:
    async def main() -> list[bytes]:
        raw.lpush(topic, b"a", b"b")
        sub = AsyncRedisQueueSubscriber(HOST, PORT, topic, consumer="w")
        await sub.open()
        got = [await sub.receive(5)]
        assert processing(raw, topic, "w") == [b"a"]
        got.append(await sub.receive(5))
        assert processing(raw, topic, "w") == [b"b"]
        # Simulate a crash: drop the connection without giving back.
        await sub._connection.disconnect()
        sub._closed = True
        again = AsyncRedisQueueSubscriber(HOST, PORT, topic, consumer="w")
        async with again:
            got.append(await again.receive(5))
            await again.ack()
        await sub._client.aclose()
        return got

    assert asyncio.run(main()) == [b"a", b"b", b"b"]
    assert raw.keys(f"{topic}*") == []


# --- Streams -----------------------------------------------------------------


def test_stream_replay_from_an_id_and_groups_fan_out(raw: Any, topic: str) -> None:
    with RedisStreamPublisher(HOST, PORT) as pub:
        for i in range(5):
            pub.send(topic, b"m%d" % i)
        ids = [entry_id.decode() for entry_id, _ in raw.xrange(topic)]
        with (
            RedisStreamSubscriber(HOST, PORT, topic, group="all") as everything,
            RedisStreamSubscriber(HOST, PORT, topic, group="after", start_id=ids[1]) as after,
            RedisStreamSubscriber(HOST, PORT, topic, group="new", start_id="$") as new,
        ):
            assert [everything.receive(5) for _ in range(5)] == [b"m%d" % i for i in range(5)]
            assert [after.receive(5) for _ in range(3)] == [b"m2", b"m3", b"m4"]
            with pytest.raises(StreamTimeoutError):
                new.receive(0.2)
            pub.send(topic, b"m5")
            for sub in (everything, after, new):
                assert sub.receive(5) == b"m5"


def test_existing_group_keeps_its_position(raw: Any, topic: str) -> None:
    with RedisStreamPublisher(HOST, PORT) as pub:
        pub.send(topic, b"first")
        with RedisStreamSubscriber(HOST, PORT, topic, group="g") as sub:
            assert sub.receive(5) == b"first"
            sub.ack()
        pub.send(topic, b"second")
        # start_id="0" only applies to a group made here; "g" exists.
        with RedisStreamSubscriber(HOST, PORT, topic, group="g", start_id="0") as sub:
            assert sub.receive(5) == b"second"


def test_ack_on_next_receive_and_explicit_ack(raw: Any, topic: str) -> None:
    with RedisStreamPublisher(HOST, PORT) as pub:
        for i in range(4):
            pub.send(topic, b"m%d" % i)
    sub = RedisStreamSubscriber(HOST, PORT, topic, group="g", consumer="c", prefetch=1)
    try:
        assert sub.receive(5) == b"m0"
        assert pending(raw, topic, "g") == 1
        assert sub.receive(5) == b"m1"
        assert pending(raw, topic, "g") == 1  # m0 acked, m1 pending
        sub.ack()
        assert pending(raw, topic, "g") == 0
        assert sub.receive(5) == b"m2"
        assert pending(raw, topic, "g") == 1
    finally:
        sub.close()
    assert pending(raw, topic, "g") == 1, "close() must not ack the last message"


def test_async_ack_on_next_receive(raw: Any, topic: str) -> None:
    with RedisStreamPublisher(HOST, PORT) as pub:
        for i in range(3):
            pub.send(topic, b"m%d" % i)

    async def main() -> list[int]:
        counts = []
        sub = AsyncRedisStreamSubscriber(HOST, PORT, topic, group="g", prefetch=1)
        async with sub:
            assert await sub.receive(5) == b"m0"
            counts.append(pending(raw, topic, "g"))
            assert await sub.receive(5) == b"m1"
            counts.append(pending(raw, topic, "g"))
            await sub.ack()
            counts.append(pending(raw, topic, "g"))
            assert await sub.receive(5) == b"m2"
        counts.append(pending(raw, topic, "g"))
        return counts

    assert asyncio.run(main()) == [1, 1, 0, 1]


def test_async_stream_acks_from_the_buffer_without_waiting(raw: Any, topic: str) -> None:
    # Entries read ahead are handed without a round trip: the XACK of the
    # previous one goes out, and its reply is taken by the next call.
    with RedisStreamPublisher(HOST, PORT) as pub:
        for i in range(5):
            pub.send(topic, b"m%d" % i)

    async def main() -> tuple[list[bytes], int, int]:
        sub = AsyncRedisStreamSubscriber(HOST, PORT, topic, group="g", prefetch=16)
        async with sub:
            got = [await sub.receive(5) for _ in range(5)]
            assert sub._rounds.busy  # the XACK of m3 awaits its reply
            await sub.ack()
            acked = pending(raw, topic, "g")
            got.append(b"" if sub._rounds.busy else b"settled")
            with RedisStreamPublisher(HOST, PORT) as pub:
                pub.send(topic, b"m5")
            got.append(await sub.receive(5))
        return got, acked, pending(raw, topic, "g")

    got, acked, left = asyncio.run(main())
    assert got == [b"m0", b"m1", b"m2", b"m3", b"m4", b"settled", b"m5"]
    assert acked == 0
    assert left == 1  # m5: handed, never acknowledged; close() leaves it pending


def test_restart_with_the_same_consumer_name_redelivers(raw: Any, topic: str) -> None:
    with RedisStreamPublisher(HOST, PORT) as pub:
        for i in range(5):
            pub.send(topic, b"m%d" % i)
    first = RedisStreamSubscriber(HOST, PORT, topic, group="g", consumer="worker")
    assert [first.receive(5), first.receive(5)] == [b"m0", b"m1"]
    first.close()  # m1 handed but unacked; m2..m4 prefetched
    assert pending(raw, topic, "g") == 4
    with RedisStreamSubscriber(HOST, PORT, topic, group="g", consumer="worker") as again:
        assert again.consumer == "worker"
        assert [again.receive(5) for _ in range(4)] == [b"m1", b"m2", b"m3", b"m4"]
        again.ack()
        assert pending(raw, topic, "g") == 0
        with pytest.raises(StreamTimeoutError):
            again.receive(0.2)


def test_pending_entries_of_a_dead_consumer_are_claimed(raw: Any, topic: str) -> None:
    with RedisStreamPublisher(HOST, PORT) as pub:
        pub.send(topic, b"m0")
        pub.send(topic, b"m1")
    dead = RedisStreamSubscriber(HOST, PORT, topic, group="g", consumer="dead", prefetch=1)
    assert dead.receive(5) == b"m0"
    dead.close()
    with RedisStreamSubscriber(
        HOST,
        PORT,
        topic,
        group="g",
        consumer="alive",
        claim_idle_ms=100,
    ) as alive:
        got = {alive.receive(5), alive.receive(5)}
        assert got == {b"m0", b"m1"}
        alive.ack()
        summary = raw.xpending(topic, "g")
        assert summary["pending"] == 0
        with pytest.raises(StreamTimeoutError):
            alive.receive(0.3)


def test_claim_does_not_redeliver_what_this_consumer_holds(raw: Any, topic: str) -> None:
    with RedisStreamPublisher(HOST, PORT) as pub:
        pub.send(topic, b"m0")
        pub.send(topic, b"m1")
    with RedisStreamSubscriber(
        HOST,
        PORT,
        topic,
        group="g",
        consumer="slow",
        claim_idle_ms=20,
        prefetch=1,
    ) as sub:
        assert sub.receive(5) == b"m0"
        time.sleep(0.3)  # m0 (handed, unacked) is now idle past claim_idle_ms
        assert sub.receive(5) == b"m1"
        with pytest.raises(StreamTimeoutError):
            sub.receive(0.3)


def test_maxlen_trims_the_stream(raw: Any, topic: str) -> None:
    with RedisStreamPublisher(HOST, PORT, maxlen=10, approximate=False) as pub:
        for i in range(50):
            pub.send(topic, b"m%d" % i)
    assert raw.xlen(topic) == 10
    with RedisStreamSubscriber(HOST, PORT, topic, group="g") as sub:
        assert [sub.receive(5) for _ in range(10)] == [b"m%d" % i for i in range(40, 50)]
    other = name()
    try:
        with RedisStreamPublisher(HOST, PORT, maxlen=10) as pub:
            for i in range(1000):
                pub.send(other, b"%d" % i)
        assert 10 <= raw.xlen(other) < 1000
    finally:
        raw.delete(other)


def test_trimmed_pending_entries_are_skipped_and_acked(raw: Any, topic: str) -> None:
    with RedisStreamPublisher(HOST, PORT) as pub:
        pub.send(topic, b"gone")
        first = RedisStreamSubscriber(HOST, PORT, topic, group="g", consumer="c", prefetch=1)
        assert first.receive(5) == b"gone"
        first.close()
        raw.xtrim(topic, maxlen=0)
        pub.send(topic, b"kept")
    with RedisStreamSubscriber(HOST, PORT, topic, group="g", consumer="c") as again:
        assert again.receive(5) == b"kept"
        again.ack()
        assert pending(raw, topic, "g") == 0


def test_deleted_stream_is_recreated(raw: Any, topic: str) -> None:
    with (
        RedisStreamPublisher(HOST, PORT) as pub,
        RedisStreamSubscriber(HOST, PORT, topic, group="g") as sub,
    ):
        pub.send(topic, b"before")
        assert sub.receive(5) == b"before"
        raw.delete(topic)  # drops the group too
        with pytest.raises(StreamTimeoutError):
            sub.receive(0.3)  # recreates stream and group
        pub.send(topic, b"after")
        assert sub.receive(5) == b"after"


def test_async_stream_cancelled_receive_loses_nothing(raw: Any, topic: str) -> None:
    async def main() -> list[bytes]:
        sub = AsyncRedisStreamSubscriber(HOST, PORT, topic, group="g", prefetch=1)
        await sub.open()
        with RedisStreamPublisher(HOST, PORT) as pub:
            try:
                got = []
                for i in range(20):
                    task = asyncio.ensure_future(sub.receive())
                    await asyncio.sleep(0.001 * (i % 5))
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        got.append(await task)
                    pub.send(topic, b"m%02d" % i)
                while len(got) < 20:
                    got.append(await sub.receive(5))
                return got
            finally:
                await sub.close()

    assert asyncio.run(main()) == [b"m%02d" % i for i in range(20)]


def test_queue_topic_that_is_not_a_list(raw: Any, topic: str) -> None:
    raw.set(topic, b"a string")
    with RedisQueuePublisher(HOST, PORT) as pub:
        pub.send(topic, b"x")  # pipelined: the error reply comes later
        with pytest.raises(ValueError, match="another type"):
            pub.flush()
    with (
        RedisQueueSubscriber(HOST, PORT, topic) as sub,
        pytest.raises(ValueError, match="another type"),
    ):
        sub.receive(1)


def test_stream_topic_that_is_not_a_stream(raw: Any, topic: str) -> None:
    raw.set(topic, b"a string")
    with pytest.raises(ValueError, match="not a stream"):
        RedisStreamSubscriber(HOST, PORT, topic, group="g")


# --- arguments and pass-through ----------------------------------------------


def test_kwargs_and_from_url_pass_through(raw: Any, topic: str) -> None:
    db1 = redis.Redis(HOST, PORT, db=1)
    try:
        with RedisQueuePublisher(HOST, PORT, db=1) as pub:
            pub.send(topic, b"in db 1")
        assert raw.llen(topic) == 0
        assert db1.llen(topic) == 1
        with RedisQueueSubscriber.from_url(f"redis://{HOST}:{PORT}/1", topic) as sub:
            assert sub.receive(5) == b"in db 1"
        with (
            RedisStreamPublisher.from_url(f"redis://{HOST}:{PORT}/1", maxlen=5) as spub,
            RedisStreamSubscriber.from_url(
                f"redis://{HOST}:{PORT}/1?protocol=3",
                topic + "-s",
                group="g",
            ) as ssub,
        ):
            spub.send(topic + "-s", b"resp3 stream")
            assert ssub.receive(5) == b"resp3 stream"
        assert db1.xlen(topic + "-s") == 1
    finally:
        db1.delete(topic, topic + "-s")
        db1.close()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with a password and an ACL user ``app``."""
    server = RedisServer(
        tmp_path / "secured",
        options=[
            "--requirepass",
            "s3cret",
            "--user",
            *["app", "on", ">apppw", "~*", "&*", "+@all"],
        ],
        client={"password": "s3cret"},
    )
    server.start()
    yield server
    server.stop(signal.SIGKILL)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, dict[str, str]]]:
    """A private redis-server speaking only TLS and asking for client certificates."""
    if shutil.which("openssl") is None:
        if REQUIRE_BROKERS:
            pytest.fail("openssl is not installed", pytrace=False)
        pytest.skip("openssl is not installed")
    d = tmp_path / "tls"
    d.mkdir()
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=pss-test-ca",
        "-keyout",
        d / "ca.key",
        "-out",
        d / "ca.pem",
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for who in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={who}",
            "-keyout",
            d / f"{who}.key",
            "-out",
            d / f"{who}.csr",
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            d / f"{who}.csr",
            "-CA",
            d / "ca.pem",
            "-CAkey",
            d / "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            d / "ext.cnf",
            "-out",
            d / f"{who}.pem",
        )
    client = {
        "ssl": True,
        "ssl_ca_certs": str(d / "ca.pem"),
        "ssl_certfile": str(d / "client.pem"),
        "ssl_keyfile": str(d / "client.key"),
    }
    port = free_port()
    server = RedisServer(
        tmp_path / "data",
        port=port,
        options=[
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(d / "server.pem"),
            "--tls-key-file",
            str(d / "server.key"),
            "--tls-ca-cert-file",
            str(d / "ca.pem"),
            "--tls-auth-clients",
            "yes",
        ],
        client=client,
    )
    server.start()
    yield server, {k: str(v) for k, v in client.items()}
    server.stop(signal.SIGKILL)


def test_tls_passes_through(tls_redis: tuple[RedisServer, dict[str, str]]) -> None:
    server, tls = tls_redis
    files: dict[str, Any] = {k: v for k, v in tls.items() if k != "ssl"}
    url = f"rediss://{HOST}:{server.port}/0"
    with (
        RedisQueuePublisher(HOST, server.port, ssl=True, **files) as pub,
        RedisQueueSubscriber.from_url(url, "jobs", **files) as sub,
        RedisStreamPublisher.from_url(url, **files) as spub,
        RedisStreamSubscriber(HOST, server.port, "s", group="g", ssl=True, **files) as ssub,
        RedisPublisher.from_url(url, **files) as ppub,
        RedisSubscriber.from_url(url, "news", **files) as psub,
    ):
        pub.send("jobs", b"over TLS")
        assert sub.receive(5) == b"over TLS"
        spub.send("s", b"stream over TLS")
        assert ssub.receive(5) == b"stream over TLS"
        ppub.send("news", b"pub/sub over TLS")
        assert psub.receive(5) == b"pub/sub over TLS"
        sub.ack()
        ssub.ack()


def test_async_subscribers_read_their_tls_connections(
    tls_redis: tuple[RedisServer, dict[str, str]],
) -> None:
    # The async subscribers read through a protocol of their own on the
    # connection's transport; over TLS that is asyncio's SSL transport.
    server, tls = tls_redis
    files: dict[str, Any] = {k: v for k, v in tls.items() if k != "ssl"}
    url = f"rediss://{HOST}:{server.port}/0"

    async def main() -> list[bytes]:
        got = []
        async with (
            AsyncRedisQueuePublisher.from_url(url, **files) as pub,
            AsyncRedisQueueSubscriber.from_url(url, "jobs", **files) as sub,
            AsyncRedisStreamPublisher.from_url(url, **files) as spub,
            AsyncRedisStreamSubscriber.from_url(url, "s", group="g", **files) as ssub,
            AsyncRedisPublisher.from_url(url, **files) as ppub,
            AsyncRedisSubscriber.from_url(url, "news", **files) as psub,
        ):
            big = bytes(range(256)) * 4096  # 1 MiB: many TLS records
            for message in (b"over TLS", big):
                await pub.send("jobs", message)
                got.append(await sub.receive(5))
                await spub.send("s", message)
                got.append(await ssub.receive(5))
                await ppub.send("news", message)
                got.append(await psub.receive(5))
            await sub.ack()
            await ssub.ack()
        return got

    big = bytes(range(256)) * 4096
    assert asyncio.run(main()) == [b"over TLS"] * 3 + [big] * 3


def test_credentials_pass_through(secured: RedisServer) -> None:
    port = secured.port
    with (
        RedisQueuePublisher(HOST, port, password="s3cret") as pub,
        RedisQueueSubscriber.from_url(f"redis://app:apppw@{HOST}:{port}/0", "jobs") as sub,
        RedisStreamPublisher(HOST, port, username="app", password="apppw") as spub,
        RedisStreamSubscriber.from_url(f"redis://:s3cret@{HOST}:{port}", "s", group="g") as ssub,
    ):
        pub.send("jobs", b"with a password")
        assert sub.receive(5) == b"with a password"
        spub.send("s", b"as user app")
        assert ssub.receive(5) == b"as user app"
        sub.ack()
        ssub.ack()


@pytest.mark.parametrize("mode", ["pubsub-retry", "queue", "streams"])
def test_wrong_password_fails_at_once_not_at_the_deadline(
    secured: RedisServer,
    mode: str,
) -> None:
    retry = RetryPolicy(deadline=20)
    extra: dict[str, Any] = {"password": "wrong", "retry": retry}
    subscriber: Any = {
        "pubsub-retry": RedisSubscriber,
        "queue": RedisQueueSubscriber,
        "streams": partial(RedisStreamSubscriber, group="g"),
    }[mode]
    start = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="credentials"):
        subscriber(HOST, secured.port, "t", **extra)
    with (
        pytest.raises(BrokerConnectionError, match="credentials"),
        RedisQueuePublisher(HOST, secured.port, password="wrong", retry=retry) as pub,
    ):
        pub.send("t", b"x")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("mode", ["queue", "queue-async", "streams"])
def test_full_redis_refuses_sends_and_consumers_still_drain_it(tmp_path: Path, mode: str) -> None:
    # Backpressure: the backlog lives in Redis; at maxmemory (noeviction)
    # Redis refuses writes and send raises BufferFullError. Consumers must
    # still drain it, though Redis then refuses LMOVE/BLMOVE too.
    server = RedisServer(tmp_path / "full", options=["--maxmemory-policy", "noeviction"])
    server.start()
    topic = name()
    streams = mode == "streams"
    pub: Any = (RedisStreamPublisher if streams else RedisQueuePublisher)(HOST, server.port)
    # Groups cannot be created once Redis is full: subscribe first.
    sub: Any = RedisStreamSubscriber(HOST, server.port, topic, group="g") if streams else None
    admin = server.client()
    try:
        empty = int(admin.info("memory")["used_memory"])
        sent = [b"%06d" % i + b"x" * 100_000 for i in range(40)]
        for message in sent:
            pub.send(topic, message)
        pub.flush()  # every message stored before Redis fills up
        # 4 MB of backlog, 1 MB of room: full until most of it is drained.
        admin.config_set("maxmemory", str(empty + 1_000_000))
        pub.send(topic, b"refused")  # pipelined: the error reply comes later
        with pytest.raises(BufferFullError, match="maxmemory"):
            pub.flush()
        if mode == "queue":
            # close() gives back a handed message while Redis is full, too.
            with RedisQueueSubscriber(HOST, server.port, topic, consumer="w") as first:
                assert first.receive(5) == sent[0]
            assert admin.llen(topic) == len(sent)
            assert admin.exists(f"{topic}:pss-processing:w") == 0
        if mode == "queue-async":
            got = asyncio.run(_drain_async(server.port, topic, len(sent)))
        else:
            sub = sub or RedisQueueSubscriber(HOST, server.port, topic)
            got = [sub.receive(5) for _ in range(len(sent))]
            sub.ack()
            with pytest.raises(StreamTimeoutError):
                sub.receive(0.1)
        assert got == sent
        if not streams:  # acknowledged stream entries stay until trimmed
            pub.send(topic, b"room again")
    finally:
        admin.close()
        pub.close()
        if sub is not None:
            sub.close()
        server.stop(signal.SIGKILL)


async def _drain_async(port: int, topic: str, count: int) -> list[bytes]:
    async with AsyncRedisQueueSubscriber(HOST, port, topic) as sub:
        got = [await sub.receive(5) for _ in range(count)]
        await sub.ack()
        return got


def test_resp3_pubsub_works_when_asked_for(raw: Any) -> None:
    topic = name()
    with (
        RedisPublisher.from_url(f"redis://{HOST}:{PORT}") as pub,
        RedisSubscriber.from_url(f"redis://{HOST}:{PORT}", topic, protocol=3) as sub,
    ):
        pub.send(topic, b"x")
        assert sub.receive(5) == b"x"


def test_url_arguments() -> None:
    assert url_arguments("redis://u:p@10.0.0.1:6380/2?socket_timeout=3") == (
        "10.0.0.1",
        6380,
        {"username": "u", "password": "p", "db": 2, "socket_timeout": 3.0},
    )
    host, port, options = url_arguments("rediss://example:6390")
    assert (host, port, options["ssl"]) == ("example", 6390, True)
    _, _, options = url_arguments("unix:///tmp/redis.sock?db=3")
    assert options == {"db": 3, "unix_socket_path": "/tmp/redis.sock"}
    with pytest.raises(ValueError, match="scheme"):
        url_arguments("http://nope")
    with pytest.raises(TypeError, match="url"):
        url_arguments(b"redis://x")  # type: ignore[arg-type]


def test_bad_arguments_name_the_parameter(raw: Any) -> None:
    with pytest.raises(TypeError, match="topic"):
        RedisSubscriber(HOST, PORT, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="topic"):
        RedisQueueSubscriber(HOST, PORT, [])
    with pytest.raises(TypeError, match="pattern"):
        RedisSubscriber(HOST, PORT, "t", pattern="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group"):
        RedisStreamSubscriber(HOST, PORT, "t", group="")
    with pytest.raises(ValueError, match="prefetch"):
        RedisStreamSubscriber(HOST, PORT, "t", group="g", prefetch=0)
    with pytest.raises(TypeError, match="claim_idle_ms"):
        RedisStreamSubscriber(HOST, PORT, "t", group="g", claim_idle_ms=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxlen"):
        RedisStreamPublisher(HOST, PORT, maxlen=0)
    with pytest.raises(TypeError, match="port"):
        RedisPublisher(HOST, "6379")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decode_responses"):
        RedisPublisher(HOST, PORT, decode_responses=True)
    with pytest.raises(ValueError, match="timeout"):
        RedisQueueSubscriber(HOST, PORT, "t", timeout=-1)
    pub = RedisQueuePublisher(HOST, PORT)
    with pytest.raises(TypeError, match="topic"):
        pub.send(b"t", b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message"):
        pub.send("t", "text")  # type: ignore[arg-type]
    pub.close()
    with pytest.raises(RuntimeError, match="closed"):
        pub.send("t", b"x")


def test_closed_subscribers_refuse_open_and_receive(raw: Any, topic: str) -> None:
    subs: list[Any] = [
        RedisSubscriber(HOST, PORT, topic),
        RedisQueueSubscriber(HOST, PORT, topic),
        RedisStreamSubscriber(HOST, PORT, topic, group="g"),
    ]
    for sub in subs:
        sub.open()
        sub.close()
        with pytest.raises(SubscriberClosedError):
            sub.open()
        with pytest.raises(SubscriberClosedError):
            sub.receive(0.1)


def test_missing_redis_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from proxystore_stream.exceptions import MissingDependencyError\n"
        "for module in ('proxystore_stream.shims.redis',"
        " 'proxystore_stream.store.connectors.redis'):\n"
        "    try:\n"
        "        __import__(module)\n"
        "    except MissingDependencyError as e:\n"
        "        print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 2
    for line in out:
        assert "[redis]" in line


# --- bench target ------------------------------------------------------------


@pytest.mark.parametrize("shim", ["redis", "redis-queue", "redis-stream"])
def test_bench_target_moves_100_messages_both_ways(raw: Any, shim: str) -> None:
    from proxystore_stream.cli.targets import redis as target

    ours, bare = target.compare(shim, 100, 100)
    assert ours > 0
    assert bare > 0

    async def through_async() -> list[bytes]:
        topic = name()
        pub, sub = await target.open_async_endpoints(shim, topic)
        try:
            for i in range(100):
                await pub.send(topic, b"%d" % i)
            return [await sub.receive(5) for _ in range(100)]
        finally:
            await sub.close()
            await pub.close()
            raw.delete(topic)

    assert asyncio.run(through_async()) == [b"%d" % i for i in range(100)]


# --- list-queue read-ahead (prefetch) ----------------------------------------


def test_queue_prefetch_moves_several_and_acks_with_the_next_round(raw: Any, topic: str) -> None:
    raw.lpush(topic, b"a", b"b", b"c", b"d", b"e")
    with RedisQueueSubscriber(HOST, PORT, topic, consumer="w", prefetch=3) as sub:
        # The first round blocks for one message and learns that 4 wait.
        assert sub.receive(5) == b"a"
        assert processing(raw, topic, "w") == [b"a"]
        # The next round acknowledges a and moves 3 at once.
        assert sub.receive(5) == b"b"
        assert processing(raw, topic, "w") == [b"d", b"c", b"b"]
        assert raw.lrange(topic, 0, -1) == [b"e"]
        # Served from the read-ahead: no round trip, nothing trimmed yet.
        assert [sub.receive(5), sub.receive(5)] == [b"c", b"d"]
        assert processing(raw, topic, "w") == [b"d", b"c", b"b"]
        assert sub.receive(5) == b"e"  # acknowledges b, c and d
        assert processing(raw, topic, "w") == [b"e"]
        sub.ack()
        assert processing(raw, topic, "w") == []
    assert raw.llen(topic) == 0


def test_queue_prefetch_close_mid_buffer_gives_back_only_the_last_handed(
    raw: Any,
    topic: str,
) -> None:
    raw.lpush(topic, b"a", b"b", b"c", b"d", b"e")
    sub = RedisQueueSubscriber(HOST, PORT, topic, consumer="w", prefetch=3)
    assert [sub.receive(5), sub.receive(5), sub.receive(5)] == [b"a", b"b", b"c"]
    sub.close()  # b is acknowledged; c (handed last) and d (read ahead) go back
    assert processing(raw, topic, "w") == []
    with RedisQueueSubscriber(HOST, PORT, topic, consumer="other") as other:
        assert [other.receive(5) for _ in range(3)] == [b"c", b"d", b"e"]
        other.ack()
    assert raw.llen(topic) == 0


def test_queue_prefetch_crash_mid_buffer_redelivers_at_most_prefetch(
    raw: Any,
    topic: str,
) -> None:
    raw.lpush(topic, b"a", b"b", b"c", b"d", b"e")
    sub = RedisQueueSubscriber(HOST, PORT, topic, consumer="w", prefetch=3)
    got = [sub.receive(5) for _ in range(3)]  # a acked; b, c handed; d read ahead
    # Crash: drop the connection without giving anything back.
    sub._connection.disconnect()
    sub._released = sub._closed = True
    sub._client.close()
    with RedisQueueSubscriber(HOST, PORT, topic, consumer="w", prefetch=3) as again:
        got += [again.receive(5) for _ in range(4)]
        again.ack()
        with pytest.raises(StreamTimeoutError):
            again.receive(0.2)
    assert got == [b"a", b"b", b"c", b"b", b"c", b"d", b"e"]
    redelivered = len(got) - len(set(got))
    assert redelivered == 2  # b and c: handed since the last round trip, <= prefetch


def test_queue_prefetch_lost_connection_mid_buffer_loses_nothing(raw: Any, topic: str) -> None:
    sent = [b"m%d" % i for i in range(8)]
    raw.lpush(topic, *sent)
    with RedisQueueSubscriber(HOST, PORT, topic, consumer="w", prefetch=4) as sub:
        got = [sub.receive(5) for _ in range(3)]  # m0; then m1 + m2, m3, m4 read ahead
        client_id = roundtrip(sub._connection, [("CLIENT", "ID")])[0]
        raw.client_kill_filter(_id=client_id)  # the next round trip fails and re-reads
        got += [sub.receive(5), sub.receive(5)]  # m3, m4: still served from the buffer
        deadline = time.monotonic() + 30
        while set(got) != set(sent) and time.monotonic() < deadline:
            got.append(sub.receive(5))
        sub.ack()
    assert set(got) == set(sent)
    # m1..m4 were handed since the last round trip (<= prefetch): delivered again.
    again = [b"m1", b"m2", b"m3", b"m4"]
    assert got == [b"m0", *again, *again, b"m5", b"m6", b"m7"]
    assert processing(raw, topic, "w") == []


def test_async_queue_prefetch_close_mid_buffer(raw: Any, topic: str) -> None:
    async def main() -> list[bytes]:
        raw.lpush(topic, b"a", b"b", b"c", b"d")
        sub = AsyncRedisQueueSubscriber(HOST, PORT, topic, consumer="w", prefetch=3)
        async with sub:
            got = [await sub.receive(5) for _ in range(2)]  # a, then b (c, d ahead)
            assert processing(raw, topic, "w") == [b"d", b"c", b"b"]
        async with AsyncRedisQueueSubscriber(HOST, PORT, topic) as other:
            got += [await other.receive(5) for _ in range(3)]
            await other.ack()
        return got

    assert asyncio.run(main()) == [b"a", b"b", b"b", b"c", b"d"]
    assert raw.llen(topic) == 0


def test_queue_prefetch_is_checked() -> None:
    with pytest.raises(TypeError, match="prefetch"):
        RedisQueueSubscriber(HOST, PORT, "t", prefetch=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefetch"):
        AsyncRedisQueueSubscriber(HOST, PORT, "t", prefetch=0)


# --- publishers: large messages are written without a copy --------------------


@pytest.mark.parametrize("size", [64 * 1024 - 1, 64 * 1024, 3 * MiB + 7])
def test_large_messages_round_trip_on_every_publisher(raw: Any, topic: str, size: int) -> None:
    message = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with RedisQueuePublisher(HOST, PORT) as pub:
        pub.send(topic, message)
        pub.send(topic, bytearray(message))
        pub.send(topic, memoryview(message))
    assert raw.lrange(topic, 0, -1) == [message] * 3
    stream = topic + "-s"
    try:
        with RedisStreamPublisher(HOST, PORT, maxlen=10) as spub:
            spub.send(stream, memoryview(message))
        assert raw.xrange(stream)[0][1] == {b"data": message}
    finally:
        raw.delete(stream)

    async def main() -> None:
        async with AsyncRedisPublisher(HOST, PORT) as apub:
            with RedisSubscriber(HOST, PORT, topic + "-p") as sub:
                await apub.send(topic + "-p", bytearray(message))
                assert sub.receive(5) == message

    asyncio.run(main())


def test_async_pubsub_receive_cut_off_mid_message_loses_nothing(raw: Any) -> None:
    channel = name()
    sent = [bytes([i]) * (2 * MiB) for i in range(6)]

    async def main() -> list[bytes]:
        got: list[bytes] = []
        async with (
            AsyncRedisPublisher(HOST, PORT) as pub,
            AsyncRedisSubscriber(HOST, PORT, channel) as sub,
        ):
            for message in sent:
                await pub.send(channel, message)
            deadline = time.monotonic() + 30
            while len(got) < len(sent) and time.monotonic() < deadline:
                # Often expires while a 2 MiB message is half read.
                with contextlib.suppress(StreamTimeoutError):
                    got.append(await sub.receive(0.0005))
        return got

    assert asyncio.run(main()) == sent


@pytest.mark.parametrize(("size", "count"), [(MiB, 128), (10 * 1024, 8192)])
def test_async_pubsub_keeps_up_with_a_publisher_on_the_same_loop(
    raw: Any, size: int, count: int
) -> None:
    # 128 or 80 MiB through the default 32 MiB pub/sub output buffer limit:
    # the subscriber must take in at least what the publisher sends between
    # two event-loop wake-ups (1 MiB, or 64 messages of 10 KiB).
    channel = name()
    message = bytes(range(256)) * (size // 256)

    async def main() -> int:
        async with (
            AsyncRedisPublisher(HOST, PORT) as pub,
            AsyncRedisSubscriber(HOST, PORT, channel) as sub,
        ):

            async def produce() -> None:
                for _ in range(count):
                    await pub.send(channel, message)

            async def consume() -> int:
                return sum([await sub.receive(30) == message for _ in range(count)])

            _, same = await asyncio.gather(produce(), consume())
            return same

    assert asyncio.run(main()) == count


def test_async_readers_keep_their_hiredis_buffer(raw: Any, topic: str) -> None:
    """hiredis keeps READER_BUFFER instead of freeing its buffer whenever it empties.

    And the connections receive into buffers half-way into a memory page
    (`receive_buffer`), not where ``mmap`` puts a large bytearray.
    """

    async def main() -> tuple[int, int, bytes, bytes, list[int]]:
        async with (
            AsyncRedisSubscriber(HOST, PORT, topic) as sub,
            AsyncRedisPublisher(HOST, PORT) as pub,
            AsyncRedisQueuePublisher(HOST, PORT) as queue_pub,
        ):
            queue_sub = AsyncRedisQueueSubscriber(HOST, PORT, topic + "-q")
            try:
                await pub.send(topic, b"p" * MiB)
                await queue_pub.send(topic + "-q", b"q" * MiB)
                await queue_pub.flush()
                published = await sub.receive(10)
                queued = await queue_sub.receive(10)
                assert sub._replies is not None
                assert queue_sub._rounds._protocol is not None
                buffers = [sub._replies.get_buffer(-1), queue_sub._rounds._protocol.get_buffer(-1)]
                return (
                    sub._replies.reader.getmaxbuf(),
                    queue_sub._rounds._protocol.reader.getmaxbuf(),
                    published,
                    queued,
                    [page_offset(buffer) for buffer in buffers],
                )
            finally:
                await queue_sub.close()

    pubsub_maxbuf, queue_maxbuf, published, queued, offsets = asyncio.run(main())
    raw.delete(topic + "-q")
    assert (pubsub_maxbuf, queue_maxbuf) == (READER_BUFFER, READER_BUFFER)
    assert offsets == [PAGE_OFFSET, PAGE_OFFSET]
    assert published == b"p" * MiB
    assert queued == b"q" * MiB


@pytest.mark.parametrize("mode", ["pubsub", "queue", "stream"])
def test_sync_subscribers_keep_their_hiredis_buffer(raw: Any, topic: str, mode: str) -> None:
    """The sync subscribers' redis-py connections parse with a reader keeping READER_BUFFER."""
    pytest.importorskip("hiredis")
    publisher: Any
    if mode == "pubsub":
        subscriber: Any = RedisSubscriber(HOST, PORT, topic)
        publisher = RedisPublisher(HOST, PORT)
    elif mode == "queue":
        subscriber = RedisQueueSubscriber(HOST, PORT, topic)
        publisher = RedisQueuePublisher(HOST, PORT)
    else:
        subscriber = RedisStreamSubscriber(HOST, PORT, topic, group=name())
        publisher = RedisStreamPublisher(HOST, PORT)
    with subscriber, publisher:
        publisher.send(topic, b"x" * MiB)
        publisher.flush()
        assert subscriber.receive(10) == b"x" * MiB
        connection = subscriber._pubsub.connection if mode == "pubsub" else subscriber._connection
        assert connection._parser._reader.getmaxbuf() == READER_BUFFER
    raw.delete(topic)
