"""Kafka under faults: a killed consumer, a restarted broker, a broker gone for good.

Every message is counted (sent, received, lost, duplicated) and the counts
are checked against the promises in docs/shims/kafka.md:

- kill -9 of a consumer: nothing lost; the restarted member resumes at the
  group's committed offset, so the duplicates are exactly the messages the
  killed member handed over after its last commit, and those are at most
  the ones it handed over in its last COMMIT_INTERVAL (plus one commit
  round trip).
- broker restart (tansu with S3 storage, so it keeps its data): producer and
  consumer continue by themselves; nothing lost; duplicates at most the
  batches in flight when the broker went away (retried by the producer),
  and the consumer drops them by event id.
- broker down for good: flush, receive, ack and close fail with
  BrokerConnectionError within the deadline plus one wait slice.

Each test prints its row of the fault table (run with -s to see them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims.kafka import COMMIT_INTERVAL
from proxystore_stream.shims.kafka import KafkaPublisher
from proxystore_stream.shims.kafka import KafkaSubscriber
from tests.kafka_broker import ObjectStore
from tests.kafka_broker import TansuBroker
from tests.shims.cases_kafka import CONSUMER_SETTINGS

pytest.importorskip("kafka")

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The consumer child: hand messages over at a steady pace, print each with
# the time it was handed over; the second run stops once the topic is idle.
CHILD = """
import sys, time
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.shims.kafka import KafkaSubscriber
servers, topic, group, idle = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
settings = dict(session_timeout_ms=6000, heartbeat_interval_ms=1000, max_poll_interval_ms=6000)
sub = KafkaSubscriber.from_bootstrap(servers, [topic], group_id=group, **settings)
sub.wait_assigned(30)  # a killed member holds the partition until its session expires
print("ready", flush=True)
while True:
    try:
        message = sub.receive(idle)
    except StreamTimeoutError:
        break
    print(message.decode(), time.monotonic(), flush=True)
    time.sleep(0.005)
sub.close()
print("done", flush=True)
"""


def row(fault: str, sent: int, received: list[int]) -> tuple[int, int]:
    """Print the fault-table row; return (lost, duplicated)."""
    counts = Counter(received)
    lost = sent - len(counts)
    duplicated = sum(n - 1 for n in counts.values())
    print(
        f"\nFAULT | {fault} | sent {sent} | received {len(received)} | "
        f"lost {lost} | duplicated {duplicated}",
    )
    return lost, duplicated


@pytest.fixture(scope="module")
def durable_broker() -> Iterator[TansuBroker]:
    """A tansu that keeps its data in S3 (moto) across restarts."""
    store = ObjectStore()
    broker = TansuBroker(store)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        store.close()


def committed(servers: str, group: str, topic: str) -> int | None:
    """The group's committed offset of the topic (asked without joining the group)."""
    import kafka

    client = kafka.KafkaConsumer(
        bootstrap_servers=servers, group_id=group, enable_auto_commit=False
    )
    try:
        return client.committed(kafka.TopicPartition(topic, 0))  # type: ignore[no-any-return]
    finally:
        client.close(autocommit=False)


def start_child(servers: str, topic: str, group: str, idle: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, servers, topic, group, str(idle)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def test_sigkill_consumer_restarted_in_group_loses_nothing(durable_broker: TansuBroker) -> None:
    servers = durable_broker.bootstrap
    topic = f"pss-kill-{uuid.uuid4().hex[:8]}"
    group = f"g-kill-{uuid.uuid4().hex[:8]}"
    sent = 500
    with KafkaPublisher.from_bootstrap(servers) as pub:
        for i in range(sent):
            pub.send(topic, b"%d" % i)

    first = start_child(servers, topic, group, idle=30)
    assert first.stdout is not None
    handed: list[tuple[int, float]] = []
    for line in first.stdout:  # bounded: the child hands over at most `sent`
        index, at = line.split()
        handed.append((int(index), float(at)))
        if len(handed) == 250:
            os.kill(first.pid, signal.SIGKILL)
            break
    # Lines the child printed before it died are still in the pipe.
    for line in first.stdout:
        index, at = line.split()
        handed.append((int(index), float(at)))
    assert first.wait(10) == -signal.SIGKILL
    first_got = [i for i, _ in handed]
    assert first_got == list(range(len(first_got)))  # in order, no gaps
    # Commits are asynchronous: one the child wrote just before it died may
    # still be on its way through the broker, so the offset read now is a
    # lower bound of the one the restarted member finds.
    resume = committed(servers, group, topic)
    assert resume is not None

    second = start_child(servers, topic, group, idle=3)
    out, _ = second.communicate(timeout=60)
    lines = out.split()
    assert lines[-1] == "done"
    second_got = [int(x) for x in lines[:-1:2]]
    restart = second_got[0]
    # Commits only move forward and cover only what was handed over.
    assert resume <= restart <= len(first_got), (resume, restart, len(first_got))
    assert second_got == list(range(restart, sent))  # in order from the commit, no gaps

    lost, duplicated = row("kill -9 consumer, restart in group", sent, first_got + second_got)
    assert lost == 0
    duplicates = set(first_got) & set(second_got)
    assert duplicated == len(duplicates) == len(first_got) - restart
    # The window: what the killed member handed over in its last commit
    # interval (commits go at most every COMMIT_INTERVAL, one round trip late).
    last = handed[-1][1]
    window = sum(1 for _, at in handed if at >= last - COMMIT_INTERVAL - 0.25) + 1
    assert duplicated <= window, (duplicated, window)


def test_broker_restart_stream_continues(durable_broker: TansuBroker) -> None:
    servers = durable_broker.bootstrap
    topic = f"pss-restart-{uuid.uuid4().hex[:8]}"
    group = f"g-restart-{uuid.uuid4().hex[:8]}"
    sent = 600
    policy = RetryPolicy(deadline=30.0, maximum=0.5)
    subscriber = KafkaSubscriber.from_bootstrap(
        servers, [topic], group_id=group, retry=policy, **CONSUMER_SETTINGS
    )
    subscriber.wait_assigned(30)
    consumer: StreamConsumer[int] = StreamConsumer(subscriber, topics=[topic], timeout=60)
    received: list[int] = []
    event_ids: list[str | None] = []
    failure: list[BaseException] = []
    halfway = threading.Event()

    def consume() -> None:
        try:
            for obj in consumer:
                received.append(obj)
                event_ids.append(consumer.last_event_id)
                if len(received) == sent // 3:
                    halfway.set()
        except BaseException as error:
            failure.append(error)
        finally:
            halfway.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    producer: StreamProducer[int] = StreamProducer(
        KafkaPublisher.from_bootstrap(servers, retry=policy, linger_ms=2)
    )
    restarted_at = 0
    for i in range(sent):
        producer.send(topic, i)
        if i % 50 == 49:
            producer.flush()
        if i == sent // 2:
            assert halfway.wait(30)
            # Mid-stream: the broker dies, stays away a while, comes back.
            durable_broker.stop(signal.SIGKILL)
            restarted_at = i
            timer = threading.Timer(2.0, durable_broker.start)
            timer.start()
    producer.close(topics=[topic])  # waits for the broker and delivers the rest
    timer.join()
    thread.join(60)
    assert not thread.is_alive()
    consumer.close()
    assert restarted_at == sent // 2
    assert not failure, failure

    lost, duplicated = row("tansu SIGKILL + restart (S3 storage)", sent, received)
    assert lost == 0
    # Duplicates come only from the redelivery of in-flight batches; each
    # carries the event id of its first delivery, so consumers can drop it.
    unique = dict(zip(event_ids, received, strict=True))
    assert sorted(unique.values()) == list(range(sent))
    assert duplicated == len(received) - len(unique)


def test_broker_down_for_good_raises_within_deadline() -> None:
    broker = TansuBroker()
    broker.start()
    topic = f"pss-down-{uuid.uuid4().hex[:8]}"
    policy = RetryPolicy(deadline=2.0, maximum=0.5)
    try:
        publisher = KafkaPublisher.from_bootstrap(broker.bootstrap, retry=policy)
        subscriber = KafkaSubscriber.from_bootstrap(
            broker.bootstrap, [topic], group_id=f"g-{topic}", retry=policy, **CONSUMER_SETTINGS
        )
        subscriber.wait_assigned(30)
        publisher.send(topic, b"before")
        publisher.flush()
        assert subscriber.receive(15) == b"before"
    finally:
        broker.stop(signal.SIGKILL)

    # The buffered message is neither delivered nor dropped silently.
    publisher.send(topic, b"after")
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="no acknowledgement"):
        publisher.flush()
    assert 2.0 <= time.monotonic() - started < 4.0

    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="no broker connection"):
        subscriber.receive()
    assert time.monotonic() - started < 4.0

    started = time.monotonic()
    with pytest.raises(BrokerConnectionError):
        subscriber.ack()  # commits "before": no coordinator to take it
    assert time.monotonic() - started < 4.0

    started = time.monotonic()
    with pytest.raises(BrokerConnectionError):
        publisher.close()
    subscriber.close()
    assert time.monotonic() - started < 8.0
    # "after" was not delivered, and flush/close said so (BrokerConnectionError).
    row("broker down for good (deadline 2 s)", 2, [0])
