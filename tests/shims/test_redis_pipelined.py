"""The async Redis publishers pipeline: send returns before the reply, flush waits.

Tests that need Redis to hold replies back use a private redis-server and
``CLIENT PAUSE ... WRITE``: the commands a publisher wrote wait in Redis,
unexecuted, until ``CLIENT UNPAUSE``; reads from another client still work.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

from proxystore_stream.exceptions import BufferFullError
from proxystore_stream.exceptions import PublisherClosedError
from tests.faults.redis_server import RedisServer
from tests.shims.redis_pipelining import BOUND
from tests.shims.redis_pipelining import HOST
from tests.shims.redis_pipelining import PORT
from tests.shims.redis_pipelining import name

redis = pytest.importorskip("redis")

from proxystore_stream.retry import RetryPolicy  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisQueuePublisher  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisStreamPublisher  # noqa: E402
from proxystore_stream.shims.redis._publish import WINDOW  # noqa: E402


@pytest.fixture
def topic(raw: Any) -> Iterator[str]:
    made = name()
    yield made
    raw.delete(made)


async def not_done_while_paused(task: asyncio.Task[None]) -> bool:
    """Whether `task` is still waiting (Redis is paused, so it cannot finish)."""
    done, _ = await asyncio.wait({task}, timeout=0.2)
    return not done


def test_pipelined_sends_arrive_in_order(raw: Any, topic: str) -> None:
    count = 10_000

    async def main() -> None:
        async with AsyncRedisQueuePublisher(HOST, PORT) as pub:
            for i in range(count):
                await pub.send(topic, b"%d" % i)
            await pub.flush()

    asyncio.run(main())
    # LPUSH: the newest is first.
    assert raw.lrange(topic, 0, -1)[::-1] == [b"%d" % i for i in range(count)]


def test_pipelined_stream_entries_arrive_in_order(raw: Any, topic: str) -> None:
    count = 2_000

    async def main() -> None:
        async with AsyncRedisStreamPublisher(HOST, PORT) as pub:
            for i in range(count):
                await pub.send(topic, bytearray(b"%d" % i))

    asyncio.run(main())
    entries = raw.xrange(topic)
    assert [fields[b"data"] for _, fields in entries] == [b"%d" % i for i in range(count)]


def test_send_returns_before_the_reply_and_flush_waits_for_it(private_redis: RedisServer) -> None:
    topic = name()
    admin = private_redis.client()

    async def main() -> None:
        async with AsyncRedisQueuePublisher(HOST, private_redis.port) as pub:
            await pub.send(topic, b"first")
            await pub.flush()
            admin.client_pause(int(BOUND * 1000), all=False)
            try:
                for i in range(10):
                    await pub.send(topic, b"%d" % i)
                # Written, not executed: the sends did not wait for Redis.
                assert admin.llen(topic) == 1
                flush = asyncio.ensure_future(pub.flush())
                assert await not_done_while_paused(flush)
            finally:
                admin.client_unpause()
            await asyncio.wait_for(flush, BOUND)
            assert admin.llen(topic) == 11

    try:
        asyncio.run(main())
    finally:
        admin.close()


def test_close_waits_for_every_reply(private_redis: RedisServer) -> None:
    topic = name()
    admin = private_redis.client()

    async def main() -> None:
        pub = AsyncRedisQueuePublisher(HOST, private_redis.port)
        await pub.send(topic, b"first")  # connects before the pause
        await pub.flush()
        admin.client_pause(int(BOUND * 1000), all=False)
        try:
            for i in range(WINDOW // 2):
                await pub.send(topic, b"%d" % i)
            close = asyncio.ensure_future(pub.close())
            assert await not_done_while_paused(close)
        finally:
            admin.client_unpause()
        await asyncio.wait_for(close, BOUND)
        assert admin.llen(topic) == 1 + WINDOW // 2
        with pytest.raises(PublisherClosedError):
            await pub.send(topic, b"after close")

    try:
        asyncio.run(main())
    finally:
        admin.close()


def test_wrongtype_reply_surfaces_on_flush(raw: Any, topic: str) -> None:
    raw.set(topic, b"a string")

    async def main() -> None:
        async with AsyncRedisQueuePublisher(HOST, PORT) as pub:
            await pub.send(topic, b"x")  # pipelined: its reply comes later
            with pytest.raises(ValueError, match=r"another type.*earlier message on topic"):
                await pub.flush()
            await pub.flush()  # raised once

    asyncio.run(main())
    assert raw.get(topic) == b"a string"


def test_wrongtype_reply_surfaces_on_a_later_send(raw: Any, topic: str) -> None:
    raw.set(topic, b"a string")
    good = topic + "-good"
    returned = 0

    async def send_until_it_raises(pub: AsyncRedisQueuePublisher) -> None:
        nonlocal returned
        for i in range(WINDOW + 1):
            await pub.send(good, b"%d" % i)
            returned += 1

    async def main() -> None:
        async with AsyncRedisQueuePublisher(HOST, PORT) as pub:
            await pub.send(topic, b"x")
            # At the latest, the send at the window reads the error reply.
            with pytest.raises(ValueError, match=f"earlier message on topic '{topic}'"):
                await send_until_it_raises(pub)

    try:
        asyncio.run(main())
        # Every send that returned was stored; the one that raised was not.
        assert raw.lrange(good, 0, -1)[::-1] == [b"%d" % i for i in range(returned)]
    finally:
        raw.delete(good)


def test_oom_reply_surfaces_as_buffer_full_on_flush(private_redis: RedisServer) -> None:
    topic = name()
    admin = private_redis.client()

    async def main() -> None:
        async with AsyncRedisQueuePublisher(HOST, private_redis.port) as pub:
            await pub.send(topic, b"before")
            await pub.flush()
            empty = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory", str(empty + 1_000_000))
            # 3 MB into 1 MB of room: some sends are refused.
            for i in range(30):
                await pub.send(topic, b"%03d" % i + b"x" * 100_000)
            with pytest.raises(
                BufferFullError, match=f"maxmemory.*earlier message on topic '{topic}'"
            ):
                await pub.flush()
            admin.config_set("maxmemory", "0")
            await pub.send(topic, b"after")
            await pub.flush()

    try:
        asyncio.run(main())
        stored = admin.lrange(topic, 0, -1)[::-1]
        assert stored[0] == b"before"
        assert stored[-1] == b"after"
        assert 1 < len(stored) < 32
    finally:
        admin.close()


def test_cancelled_sends_lose_nothing_accepted(raw: Any, topic: str) -> None:
    count = 300
    padding = b"." * 200_000  # large enough that writes wait for the socket
    rng = random.Random(7)
    accepted: list[int] = []

    async def main() -> None:
        async with AsyncRedisQueuePublisher(HOST, PORT) as pub:

            async def produce(start: int) -> None:
                for i in range(start, count):
                    await pub.send(topic, b"%05d" % i + padding)
                    accepted.append(i)

            for _ in range(count):  # bounded: every round sends one or more
                start = accepted[-1] + 1 if accepted else 0
                if start == count:
                    break
                task = asyncio.ensure_future(produce(start))
                for _ in range(rng.randint(0, 12)):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.wait({task}, timeout=BOUND)
                if not accepted or accepted[-1] < start:
                    await asyncio.wait_for(pub.send(topic, b"%05d" % start + padding), BOUND)
                    accepted.append(start)
            await pub.flush()

    asyncio.run(main())
    assert accepted == list(range(count))
    stored = [int(m[:5]) for m in reversed(raw.lrange(topic, 0, -1))]
    # Everything accepted, in order; a cut-off command may be stored twice.
    assert list(dict.fromkeys(stored)) == list(range(count))
    assert len(stored) < 2 * count


def test_connection_lost_with_replies_outstanding_resends_them(private_redis: RedisServer) -> None:
    topic = name()
    admin = private_redis.client()

    async def main() -> None:
        pub = AsyncRedisQueuePublisher(
            HOST,
            private_redis.port,
            client_name="pss-pipe-victim",
            retry=RetryPolicy(deadline=BOUND),
        )
        try:
            await pub.send(topic, b"first")
            await pub.flush()
            (victim,) = [c for c in admin.client_list() if c["name"] == "pss-pipe-victim"]
            admin.client_pause(int(BOUND * 1000), all=False)
            try:
                for i in range(10):
                    await pub.send(topic, b"%d" % i)
                # The queued commands die with the connection, unexecuted.
                admin.client_kill_filter(_id=victim["id"])
            finally:
                admin.client_unpause()
            await asyncio.wait_for(pub.flush(), BOUND)
        finally:
            await pub.close()

    try:
        asyncio.run(main())
        assert admin.lrange(topic, 0, -1)[::-1] == [b"first"] + [b"%d" % i for i in range(10)]
    finally:
        admin.close()
