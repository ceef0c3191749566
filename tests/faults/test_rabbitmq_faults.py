"""RabbitMQ under faults, on a private node: every message counted.

One node (`tests.faults.rabbitmq_server.RabbitMQNode`) serves the module; a
test that kills it leaves it to the next test's `live` fixture to restart.
Each test prints a row ``fault | sent | received | lost | duplicated`` (run
with ``-s`` to see them) and asserts the documented promise:

- work queue: nothing lost; duplicates at most what the broker had handed
  out unacked (``prefetch``) plus what the publisher sent again after a
  reconnect (its log line says how many);
- fan-out: the subscriber reconnects and receives what is published after
  it is back, and warns that it missed the rest;
- a broker that stays down: `BrokerConnectionError` within the retry
  deadline plus one connect attempt, on both sides.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxystore_stream import AsyncStreamConsumer
from proxystore_stream import AsyncStreamProducer
from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.retry import NO_RETRY
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQPublisher
from proxystore_stream.shims.rabbitmq import AsyncRabbitMQSubscriber
from proxystore_stream.shims.rabbitmq import RabbitMQPublisher
from proxystore_stream.shims.rabbitmq import RabbitMQSubscriber
from tests.faults.rabbitmq_server import RabbitMQNode

# Long enough to ride out a node restart (about 6 s here) on a busy machine.
RIDE_OUT = RetryPolicy(deadline=45.0, initial=0.05, maximum=0.5)
PREFETCH = 20
RESENT = re.compile(r"sent (\d+) unconfirmed message")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    server = RabbitMQNode(tmp_path_factory.mktemp("rabbitmq"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def live(node: RabbitMQNode) -> RabbitMQNode:
    """The module's node, started again if an earlier test left it down."""
    if not node.ready():
        node.restart()
    return node


def topic_name() -> str:
    return f"fault-{uuid.uuid4().hex[:10]}"


def report(fault: str, sent: int, received: list[int]) -> tuple[int, int]:
    """Print the table row; return (lost, duplicated)."""
    distinct = set(received)
    lost = len(set(range(sent)) - distinct)
    duplicated = len(received) - len(distinct)
    print(
        f"\nFAULT | {fault} | sent {sent} | received {len(received)} | "
        f"lost {lost} | duplicated {duplicated}",
    )
    return lost, duplicated


def resent_count(caplog: pytest.LogCaptureFixture) -> int:
    """Messages publishers sent again after reconnecting, from their log lines."""
    total = 0
    for record in caplog.records:
        match = RESENT.search(record.getMessage())
        if match:
            total += int(match.group(1))
    return total


# A work-queue consumer in its own process: prints each message as it hands
# it over (ack-on-next), so the parent knows what it had when killed.
CONSUMER = """
import sys
from proxystore_stream.shims.rabbitmq import RabbitMQSubscriber

url, topic, prefetch = sys.argv[1], sys.argv[2], int(sys.argv[3])
sub = RabbitMQSubscriber(topic, url=url, mode="queue", prefetch=prefetch)
print("READY", flush=True)
for body in sub:
    if body == b"END":
        sub.ack()
        break
    print(body.decode(), flush=True)
sub.close()
print("DONE", flush=True)
"""


class Consumer:
    """A consumer subprocess and the lines it printed, read by a thread."""

    def __init__(self, url: str, topic: str) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-c", CONSUMER, url, topic, str(PREFETCH)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def next_line(self, timeout: float = 30.0) -> str:
        return self.lines.get(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL, by the PID we started
        self.process.wait(10)


def test_consumer_killed_mid_stream_loses_nothing(live: RabbitMQNode) -> None:
    topic, sent, kill_after = topic_name(), 1000, 300
    with RabbitMQPublisher(url=live.url, mode="queue") as pub:
        for i in range(sent):
            pub.send(topic, b"%d" % i)
        pub.send(topic, b"END")
        pub.flush()  # all confirmed: on disk in the durable queue

    received: list[int] = []
    first = Consumer(live.url, topic)
    try:
        assert first.next_line() == "READY"
        while len(received) < kill_after:
            received.append(int(first.next_line()))
    finally:
        first.kill()
    assert first.process.returncode == -9
    # What it printed before it died was handed over (and, but for the
    # last, acked): count it all.
    while (line := first.next_line()) != "EOF":
        received.append(int(line))
    handed_first = len(received)

    second = Consumer(live.url, topic)
    try:
        assert second.next_line() == "READY"
        while (line := second.next_line()) != "DONE":
            received.append(int(line))
        assert second.process.wait(10) == 0
    finally:
        second.kill()

    with (
        RabbitMQSubscriber(topic, url=live.url, mode="queue") as sub,
        pytest.raises(StreamTimeoutError),
    ):
        sub.receive(0.3)  # nothing left behind
    lost, duplicated = report("consumer SIGKILL mid-stream (work queue)", sent, received)
    assert lost == 0
    # Only what the broker had handed the killed consumer and not seen acked.
    assert duplicated <= PREFETCH
    assert received[:handed_first] == list(range(handed_first))


def test_node_restart_mid_stream_sync(
    live: RabbitMQNode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="proxystore_stream")
    topic, sent, restart_after = topic_name(), 2000, 300
    publisher = RabbitMQPublisher(url=live.url, mode="queue", retry=RIDE_OUT)
    subscriber = RabbitMQSubscriber(
        topic,
        url=live.url,
        mode="queue",
        prefetch=PREFETCH,
        retry=RIDE_OUT,
    )
    received: list[int] = []
    halfway = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            with StreamConsumer[int](subscriber, timeout=60) as consumer:
                for number in consumer:
                    received.append(number)
                    if len(received) == restart_after:
                        halfway.set()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
            halfway.set()

    def produce() -> None:
        try:
            with StreamProducer[int](publisher) as producer:
                for i in range(sent):
                    producer.send(topic, i)
                    time.sleep(0.001)  # spread the stream over the restart
                producer.close_topics(topic)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
    for thread in threads:
        thread.start()
    assert halfway.wait(60)
    restart_took = live.restart()
    for thread in threads:
        thread.join(90)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    lost, duplicated = report(
        f"node SIGKILL + restart ({restart_took:.1f} s) mid-stream, sync",
        sent,
        received,
    )
    assert lost == 0
    assert duplicated <= PREFETCH + resent_count(caplog)
    assert any("subscriber reconnected" in r.getMessage() for r in caplog.records)
    assert any("publisher reconnected" in r.getMessage() for r in caplog.records)


def test_node_restart_mid_stream_async(
    live: RabbitMQNode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="proxystore_stream")
    topic, sent, restart_after = topic_name(), 2000, 300
    received: list[int] = []

    async def main() -> float:
        publisher = AsyncRabbitMQPublisher(url=live.url, mode="queue", retry=RIDE_OUT)
        subscriber = AsyncRabbitMQSubscriber(
            topic,
            url=live.url,
            mode="queue",
            prefetch=PREFETCH,
            retry=RIDE_OUT,
        )
        await publisher.open()
        await subscriber.open()
        halfway = asyncio.Event()

        async def consume() -> None:
            async with AsyncStreamConsumer[int](subscriber, timeout=60) as consumer:
                async for number in consumer:
                    received.append(number)
                    if len(received) == restart_after:
                        halfway.set()

        async def produce() -> None:
            async with AsyncStreamProducer[int](publisher) as producer:
                for i in range(sent):
                    await producer.send(topic, i)
                    await asyncio.sleep(0.001)
                await producer.close_topics(topic)

        tasks = [asyncio.ensure_future(consume()), asyncio.ensure_future(produce())]
        await asyncio.wait_for(halfway.wait(), 60)
        took = await asyncio.to_thread(live.restart)
        await asyncio.wait_for(asyncio.gather(*tasks), 90)
        return took

    restart_took = asyncio.run(main())
    lost, duplicated = report(
        f"node SIGKILL + restart ({restart_took:.1f} s) mid-stream, async",
        sent,
        received,
    )
    assert lost == 0
    assert duplicated <= PREFETCH + resent_count(caplog)
    assert any("subscriber reconnected" in r.getMessage() for r in caplog.records)
    assert any("publisher reconnected" in r.getMessage() for r in caplog.records)


def test_connections_closed_by_broker_fanout_and_queue_continue(
    live: RabbitMQNode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker closes every connection (320): all four endpoints carry on."""
    caplog.set_level(logging.WARNING, logger="proxystore_stream")
    fan, work = topic_name(), topic_name()
    sync_fan = RabbitMQSubscriber(fan, url=live.url, retry=RIDE_OUT)
    sync_work = RabbitMQSubscriber(work, url=live.url, mode="queue", retry=RIDE_OUT)
    # NO_RETRY endpoints fail at the first loss instead.
    fragile_pub = RabbitMQPublisher(url=live.url, mode="queue", retry=NO_RETRY)
    fragile_sub = RabbitMQSubscriber(topic_name(), url=live.url, mode="queue", retry=NO_RETRY)

    async def main() -> dict[str, list[int]]:
        got: dict[str, list[int]] = collections.defaultdict(list)
        async with (
            AsyncRabbitMQPublisher(url=live.url, retry=RIDE_OUT) as fan_pub,
            AsyncRabbitMQPublisher(url=live.url, mode="queue", retry=RIDE_OUT) as work_pub,
            AsyncRabbitMQSubscriber(fan, url=live.url, retry=RIDE_OUT) as async_fan,
        ):
            for i in range(100):
                await fan_pub.send(fan, b"%d" % i)
                await work_pub.send(work, b"%d" % i)
            await fan_pub.flush()
            await work_pub.flush()
            for _ in range(100):
                got["sync fan-out"].append(int(await asyncio.to_thread(sync_fan.receive, 10)))
                got["async fan-out"].append(int(await async_fan.receive(10)))
            for _ in range(50):
                got["sync work queue"].append(int(await asyncio.to_thread(sync_work.receive, 10)))

            await asyncio.to_thread(live.close_connections)

            # The publishers notice on their next send; the subscribers on
            # their next receive. Fan-out subscribers must be back before
            # anything they should get is sent: wait for their log lines.
            async_wait = asyncio.ensure_future(async_fan.receive(30))
            sync_wait = asyncio.ensure_future(asyncio.to_thread(sync_fan.receive, 30))
            deadline = time.monotonic() + 30
            while (
                time.monotonic() < deadline
                and sum("fan-out subscriber reconnected" in r.getMessage() for r in caplog.records)
                < 2
            ):
                await asyncio.sleep(0.05)
            for i in range(100, 200):
                await fan_pub.send(fan, b"%d" % i)
                await work_pub.send(work, b"%d" % i)
            await fan_pub.flush()
            await work_pub.flush()
            got["async fan-out"].append(int(await async_wait))
            got["sync fan-out"].append(int(await sync_wait))
            while len(got["async fan-out"]) < 200:
                got["async fan-out"].append(int(await async_fan.receive(10)))
            while len(got["sync fan-out"]) < 200:
                got["sync fan-out"].append(int(await asyncio.to_thread(sync_fan.receive, 10)))
            while len(set(got["sync work queue"])) < 200:
                got["sync work queue"].append(int(await asyncio.to_thread(sync_work.receive, 10)))
            sync_work.ack()
        return got

    try:
        got = asyncio.run(main())
        start = time.monotonic()

        def send_until_noticed() -> None:
            for _ in range(100):  # the first may still fit the socket buffer
                fragile_pub.send(work, b"never")
            fragile_pub.flush()

        with pytest.raises(BrokerConnectionError, match="was lost"):
            send_until_noticed()
        with pytest.raises(BrokerConnectionError, match="was lost"):
            fragile_sub.receive(5)
        assert time.monotonic() - start < 5
    finally:
        for endpoint in (sync_fan, sync_work, fragile_sub, fragile_pub):
            with contextlib.suppress(BrokerConnectionError):
                endpoint.close()
    for name, numbers in got.items():
        lost, duplicated = report(f"broker closes all connections, {name}", 200, numbers)
        assert lost == 0, name
        if "fan-out" in name:
            # Nothing was published while they were away, so nothing missed.
            assert numbers == list(range(200)), name
        else:
            assert duplicated <= PREFETCH + resent_count(caplog), name
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("fan-out subscriber reconnected" in m and "missed" in m for m in warnings) == 2


def test_node_down_for_good_raises_within_the_deadline(live: RabbitMQNode) -> None:
    policy = RetryPolicy(deadline=1.0, initial=0.05, maximum=0.2)
    topic = topic_name()
    # The deadline, plus one connect attempt (refused at once here), plus
    # slack for a loaded machine.
    bound = 1.0 + 5.0
    loop = asyncio.new_event_loop()
    publisher = RabbitMQPublisher(url=live.url, mode="queue", retry=policy)
    subscriber = RabbitMQSubscriber(topic, url=live.url, mode="queue", retry=policy)
    async_pub = AsyncRabbitMQPublisher(url=live.url, mode="queue", retry=policy)
    async_sub = AsyncRabbitMQSubscriber(topic, url=live.url, mode="queue", retry=policy)

    async def open_async() -> None:
        await async_pub.open()
        await async_sub.open()
        await async_pub.send(topic, b"before")
        await async_pub.flush()

    def sync_send() -> None:
        for _ in range(100):  # the first sends may still fit the socket buffer
            publisher.send(topic, b"after")
        publisher.flush()

    def sync_receive() -> None:
        for _ in range(100):
            subscriber.receive(5)

    async def async_send() -> None:
        for _ in range(100):
            await async_pub.send(topic, b"after")
        await async_pub.flush()

    async def async_receive() -> None:
        for _ in range(100):
            await async_sub.receive(5)

    timings: dict[str, float] = {}

    def timed(name: str, call: Any) -> None:
        start = time.monotonic()
        with pytest.raises(BrokerConnectionError, match="gave up"):
            call()
        timings[name] = time.monotonic() - start

    try:
        loop.run_until_complete(open_async())
        publisher.send(topic, b"before")
        publisher.flush()
        live.kill()  # and not started again

        timed("sync publisher", sync_send)
        timed("sync subscriber", sync_receive)
        timed("async publisher", lambda: loop.run_until_complete(async_send()))
        timed("async subscriber", lambda: loop.run_until_complete(async_receive()))
        print(f"\nFAULT | node down for good | raised after (s) {timings}")
        assert all(took < bound for took in timings.values()), timings
    finally:
        for close in (publisher.close, subscriber.close):
            with contextlib.suppress(BrokerConnectionError):
                close()
        for aclose in (async_pub.close, async_sub.close):
            with contextlib.suppress(BrokerConnectionError):
                loop.run_until_complete(aclose())
        loop.close()
