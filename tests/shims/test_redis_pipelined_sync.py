"""The sync Redis publishers pipeline too: send returns before the reply, flush waits.

The async twins' tests are in `test_redis_pipelined.py`. Tests that need
Redis to hold replies back use a private redis-server and ``CLIENT PAUSE
... WRITE``: the commands a publisher wrote wait in Redis, unexecuted,
until ``CLIENT UNPAUSE``; reads from another client still work. A call that
must wait runs in a thread, joined with a bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest

from proxystore_stream.exceptions import PublisherClosedError
from tests.faults.redis_server import RedisServer
from tests.shims.redis_pipelining import BOUND
from tests.shims.redis_pipelining import HOST
from tests.shims.redis_pipelining import PORT
from tests.shims.redis_pipelining import name
from tests.shims.redis_pipelining import paused

redis = pytest.importorskip("redis")

from proxystore_stream.retry import RetryPolicy  # noqa: E402
from proxystore_stream.shims.redis import AsyncRedisPublisher  # noqa: E402
from proxystore_stream.shims.redis import RedisPublisher  # noqa: E402
from proxystore_stream.shims.redis import RedisQueuePublisher  # noqa: E402
from proxystore_stream.shims.redis import RedisStreamPublisher  # noqa: E402
from proxystore_stream.shims.redis._window import WINDOW  # noqa: E402
from proxystore_stream.shims.redis.pubsub import SETTLE_FROM  # noqa: E402

STILL_WAITING = 0.2
"""Seconds a call must stay blocked to count as waiting for Redis."""


@pytest.fixture
def topic(raw: Any) -> Iterator[str]:
    made = name()
    yield made
    raw.delete(made)


class Call:
    """A blocking call run in a thread, to see whether it waits."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self._function = function
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._function()
        except BaseException as exc:
            self.error = exc

    def waiting(self) -> bool:
        """Whether the call is still blocked after `STILL_WAITING` seconds."""
        self._thread.join(STILL_WAITING)
        return self._thread.is_alive()

    def finish(self) -> None:
        """Wait for the call (at most `BOUND` s) and raise what it raised."""
        self._thread.join(BOUND)
        assert not self._thread.is_alive(), "the call did not end in time"
        if self.error is not None:
            raise self.error


def test_pipelined_sends_arrive_in_order(raw: Any, topic: str) -> None:
    count = 10_000
    with RedisQueuePublisher(HOST, PORT) as pub:
        for i in range(count):
            pub.send(topic, b"%d" % i)
        pub.flush()
        # LPUSH: the newest is first.
        assert raw.lrange(topic, 0, -1)[::-1] == [b"%d" % i for i in range(count)]


def test_a_reused_buffer_is_stored_as_it_was_sent(raw: Any, topic: str) -> None:
    # A message is kept until acknowledged: a mutable one is copied, so
    # the caller may reuse its buffer as soon as send returns.
    buffer = bytearray(8)
    with RedisStreamPublisher(HOST, PORT) as pub:
        for i in range(2_000):
            buffer[:] = b"%08d" % i
            pub.send(topic, buffer)
    entries = raw.xrange(topic)
    assert [fields[b"data"] for _, fields in entries] == [b"%08d" % i for i in range(2_000)]


@pytest.fixture
def connected(private_redis: RedisServer) -> Iterator[tuple[RedisQueuePublisher, Any, str]]:
    """A publisher that stored one message ("first") on a fresh topic; an admin client."""
    topic = name()
    admin = private_redis.client()
    pub = RedisQueuePublisher(HOST, private_redis.port)
    try:
        pub.send(topic, b"first")  # connects before any pause
        pub.flush()
        yield pub, admin, topic
    finally:
        pub.close()
        admin.close()


def test_send_returns_before_the_reply_and_flush_waits_for_it(connected: Any) -> None:
    pub, admin, topic = connected
    with paused(admin):
        sends = Call(lambda: [pub.send(topic, b"%d" % i) for i in range(10)])
        assert not sends.waiting()
        # Written, not executed: the sends did not wait for Redis.
        assert admin.llen(topic) == 1
        flush = Call(pub.flush)
        assert flush.waiting()
    flush.finish()
    assert admin.llen(topic) == 11


def test_the_send_past_the_window_waits_for_a_reply(connected: Any) -> None:
    pub, admin, topic = connected
    with paused(admin):
        window = Call(lambda: [pub.send(topic, b"%d" % i) for i in range(WINDOW)])
        assert not window.waiting()
        past = Call(lambda: pub.send(topic, b"past the window"))
        assert past.waiting()
    past.finish()
    pub.flush()
    assert admin.llen(topic) == 1 + WINDOW + 1


def test_close_waits_for_every_reply(connected: Any) -> None:
    pub, admin, topic = connected
    with paused(admin):
        for i in range(WINDOW // 2):
            pub.send(topic, b"%d" % i)
        close = Call(pub.close)
        assert close.waiting()
    close.finish()
    assert admin.llen(topic) == 1 + WINDOW // 2
    with pytest.raises(PublisherClosedError):
        pub.send(topic, b"after close")


def test_wrongtype_reply_surfaces_on_flush_once(raw: Any, topic: str) -> None:
    raw.set(topic, b"a string")
    with RedisQueuePublisher(HOST, PORT) as pub:
        pub.send(topic, b"x")  # pipelined: its reply comes later
        with pytest.raises(ValueError, match=r"another type.*earlier message on topic"):
            pub.flush()
        pub.flush()  # raised once
    assert raw.get(topic) == b"a string"


def test_wrongtype_reply_surfaces_on_a_later_send(raw: Any, topic: str) -> None:
    raw.set(topic, b"a string")
    good = topic + "-good"
    returned = 0

    def send_until_it_raises(pub: RedisQueuePublisher) -> None:
        nonlocal returned
        for i in range(WINDOW + 1):
            pub.send(good, b"%d" % i)
            returned += 1

    try:
        with RedisQueuePublisher(HOST, PORT) as pub:
            pub.send(topic, b"x")
            # At the latest, the send at the window reads the error reply.
            with pytest.raises(ValueError, match=f"earlier message on topic '{topic}'"):
                send_until_it_raises(pub)
        # Every send that returned was stored; the one that raised was not.
        assert raw.lrange(good, 0, -1)[::-1] == [b"%d" % i for i in range(returned)]
    finally:
        raw.delete(good)


def test_connection_lost_with_replies_outstanding_resends_them(private_redis: RedisServer) -> None:
    topic = name()
    admin = private_redis.client()
    pub = RedisQueuePublisher(
        HOST,
        private_redis.port,
        client_name="pss-pipe-victim",
        retry=RetryPolicy(deadline=BOUND),
    )
    try:
        pub.send(topic, b"first")
        pub.flush()
        (victim,) = [c for c in admin.client_list() if c["name"] == "pss-pipe-victim"]
        with paused(admin):
            for i in range(10):
                pub.send(topic, b"%d" % i)
            # The queued commands die with the connection, unexecuted.
            admin.client_kill_filter(_id=victim["id"])
        pub.flush()
        assert admin.lrange(topic, 0, -1)[::-1] == [b"first"] + [b"%d" % i for i in range(10)]
    finally:
        pub.close()
        admin.close()


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_large_pubsub_message_waits_for_its_reply(
    private_redis: RedisServer,
    use_async: bool,
) -> None:
    # Pub/sub has no flow control; a large message waits for its reply, so
    # a publisher cannot run far ahead of Redis (and of its subscribers).
    admin = private_redis.client()
    loop = asyncio.new_event_loop()
    pub: Any = (AsyncRedisPublisher if use_async else RedisPublisher)(HOST, private_redis.port)

    def run(call: Any) -> Any:
        return loop.run_until_complete(call) if use_async else call

    try:
        run(pub.send("channel", b"connect"))
        run(pub.flush())
        with paused(admin):
            small = Call(lambda: run(pub.send("channel", b"x" * (SETTLE_FROM - 1))))
            assert not small.waiting()
            large = Call(lambda: run(pub.send("channel", b"x" * SETTLE_FROM)))
            assert large.waiting()
        large.finish()
        assert not pub._window.pending  # its reply, and the earlier one, were read
    finally:
        run(pub.close())
        loop.close()
        admin.close()
