"""What runs inside a soak's producer and consumer processes (see `cli.soak`).

Each role is one loop around a `_Pacer` (producers: what to send next, and
when flow control holds a send back) or a `_Checker` (consumers: is the
payload what its metadata says, and which sequence numbers arrived). The
loops come in two flavours, `StreamProducer`/`StreamConsumer` over the sync
shims and `AsyncStreamProducer`/`AsyncStreamConsumer` over their async
twins (``--async``); the counting is written once, in those two classes.

With ``--async`` every producer and consumer process runs its role as the
one task of an event loop, and the in-process ``local`` shim runs every
role as a task of one loop (instead of a thread each).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import struct
import threading
import time
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COUNT_EVERY",
    "LOCAL_MAXSIZE",
    "MIN_SIZE",
    "POLL_SECONDS",
    "REPORT_SECONDS",
    "SAMPLE_SECONDS",
    "SETUP_SECONDS",
    "Shared",
    "Spec",
    "in_process_main",
    "open_publisher",
    "role_main",
]

SETUP_SECONDS = 60.0
"""Seconds every process has to connect and report ready."""
REPORT_SECONDS = 20.0
"""Seconds to wait for the processes' reports after the consumers were stopped."""
SAMPLE_SECONDS = 0.1
"""How often each process samples its resident set size."""
POLL_SECONDS = 0.2
"""How long a consumer waits for a message before checking whether to stop."""
COUNT_EVERY = 64
"""Producers and consumers publish their counts every this many messages at most."""

COUNT_BYTES = 1 << 20
"""... and every this many payload bytes: large payloads are counted more often."""


def count_every(size: int) -> int:
    """How many payloads of `size` bytes go between two counts (flow-control checks)."""
    return max(1, min(COUNT_EVERY, COUNT_BYTES // size))


LOCAL_MAXSIZE = 1024
"""Buffer of each `local` subscriber (block policy)."""
HOLD_SECONDS = 0.001
"""How long a producer held back by flow control sleeps before asking again."""
GO_POLL_SECONDS = 0.01
"""How often an async role that is ready looks whether streaming started."""

_HEADER = struct.Struct(">IQ")
MIN_SIZE = _HEADER.size
"""The smallest payload: producer index and sequence number."""

# RabbitMQ work queues made by a soak expire once unused for a minute.
_QUEUE_ARGS = {"x-expires": 60_000}


@dataclass(frozen=True)
class Spec:
    """Everything a producer or consumer needs (pickled to each process)."""

    shim: str
    topic: str
    size: int
    store: str
    store_dir: str
    batch_size: int
    producers: int
    consumers: int
    max_in_flight: int
    seconds: float
    fanout: bool
    redis_url: str
    rabbitmq_url: str
    use_async: bool = False
    kafka_bootstrap: str = ""
    zmq_frontend: str = ""
    """Where ZeroMQ producers connect: the run's forwarder (XSUB side)."""
    zmq_backend: str = ""
    """Where ZeroMQ consumers connect: the run's forwarder (XPUB side)."""

    def presence_topic(self, consumer: int) -> str:
        """The topic ZeroMQ consumer `consumer` subscribes to, after `topic`, to be counted."""
        return f"{self.topic}-present-{consumer}"

    @property
    def count_every(self) -> int:
        """Payloads between two counts (`count_every` of this size)."""
        return count_every(self.size)


class Flag:
    """A signal shared by processes: the parent sets it once, roles read it.

    Not a `multiprocessing.Event`: its ``set()`` waits until every process
    waiting on it has woken, so a process that died while waiting (a role
    that failed during setup leaves its memory sampler waiting for the
    start) made ``set()``, and the whole run, block forever. Waiting here
    polls a shared byte every `GO_POLL_SECONDS` instead, which no dead
    waiter can hold up.

    Args:
        ctx: The multiprocessing context the roles are started from.
    """

    def __init__(self, ctx: Any) -> None:
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        """Raise the flag (never waits)."""
        self._value.value = 1

    def is_set(self) -> bool:
        """Whether the flag is raised."""
        return bool(self._value.value)

    def wait(self, timeout: float) -> bool:
        """Wait until the flag is raised, `timeout` seconds at most; False if it was not."""
        deadline = time.monotonic() + timeout
        while not self._value.value:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(GO_POLL_SECONDS, remaining))
        return True


@dataclass(frozen=True)
class Shared:
    """Primitives shared by the parent and every process."""

    results: Any  # multiprocessing.Queue of (kind, label, payload)
    go: Any  # Flag: start streaming
    stop: Any  # Flag: consumers stop
    sent: Any  # RawArray: messages sent, one slot per producer (single writer)
    received: Any  # RawArray: messages received, one slot per consumer
    queue: Any  # the multiprocessing.Queue of the queue shim, or None


# --- memory --------------------------------------------------------------------


def _rss_kb() -> int:
    """This process's resident set size in KiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class _RssSampler:
    """Samples RSS in a daemon thread between `begin()` and `end()`."""

    def __init__(self) -> None:
        self.start_kb = 0
        self.peak_kb = 0
        self.end_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        self.start_kb = self.peak_kb = _rss_kb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def begin_on_go(self, shared: Shared) -> None:
        """Begin sampling once streaming starts (in a daemon thread of its own)."""

        def wait() -> None:
            if shared.go.wait(SETUP_SECONDS):
                self.begin()

        threading.Thread(target=wait, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak_kb = max(self.peak_kb, _rss_kb())

    def end(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(1.0)
        self.end_kb = _rss_kb()
        self.peak_kb = max(self.peak_kb, self.end_kb)

    def report(self) -> dict[str, int] | None:
        if self._thread is None:
            return None
        self.end()
        return {
            "start_kb": self.start_kb,
            "peak_growth_kb": self.peak_kb - self.start_kb,
            "end_growth_kb": self.end_kb - self.start_kb,
        }


# --- endpoints -----------------------------------------------------------------


def open_publisher(spec: Spec, shared: Shared) -> Any:
    """The shim's publisher (its async twin with `spec.use_async`); not `local`."""
    use_async = spec.use_async
    if spec.shim == "queue":
        from proxystore_stream.shims import queue

        cls: Any = queue.AsyncQueuePublisher if use_async else queue.QueuePublisher
        return cls({spec.topic: shared.queue})
    if spec.shim == "kafka":
        from proxystore_stream.cli.targets.kafka import PRODUCER
        from proxystore_stream.shims import kafka

        # The async twin's from_bootstrap is a coroutine: `_opened` awaits it.
        cls = kafka.AsyncKafkaPublisher if use_async else kafka.KafkaPublisher
        return cls.from_bootstrap(spec.kafka_bootstrap, **PRODUCER)
    if spec.shim == "zmq":
        from proxystore_stream.shims import zmq

        cls = zmq.AsyncZeroMQPublisher if use_async else zmq.ZeroMQPublisher
        return cls(spec.zmq_frontend, bind=False)
    if spec.shim.startswith("redis"):
        from proxystore_stream.shims import redis

        if spec.shim == "redis":
            cls = redis.AsyncRedisPublisher if use_async else redis.RedisPublisher
        elif spec.shim == "redis-queue":
            cls = redis.AsyncRedisQueuePublisher if use_async else redis.RedisQueuePublisher
        else:
            cls = redis.AsyncRedisStreamPublisher if use_async else redis.RedisStreamPublisher
        return cls.from_url(spec.redis_url)
    from proxystore_stream.shims import rabbitmq

    cls = rabbitmq.AsyncRabbitMQPublisher if use_async else rabbitmq.RabbitMQPublisher
    if spec.shim == "rabbitmq":
        return cls(url=spec.rabbitmq_url, mode="fanout")
    return cls(url=spec.rabbitmq_url, mode="queue", queue_arguments=_QUEUE_ARGS)


def _open_subscriber(spec: Spec, shared: Shared, index: int) -> Any:
    """The shim's subscriber, subscribed (async ones once `_opened`); not `local`."""
    use_async = spec.use_async
    if spec.shim == "queue":
        from proxystore_stream.shims import queue

        cls: Any = queue.AsyncQueueSubscriber if use_async else queue.QueueSubscriber
        return cls(shared.queue)
    if spec.shim == "kafka":
        from proxystore_stream.cli.targets.kafka import CONSUMER
        from proxystore_stream.shims import kafka

        # A consumer group each: every consumer gets every message (fan-out).
        group = f"{spec.topic}-{index}"
        if use_async:  # a coroutine; `_opened` awaits it and waits for the assignment
            return kafka.AsyncKafkaSubscriber.from_bootstrap(
                spec.kafka_bootstrap, [spec.topic], group_id=group, **CONSUMER
            )
        subscriber = kafka.KafkaSubscriber.from_bootstrap(
            spec.kafka_bootstrap, [spec.topic], group_id=group, **CONSUMER
        )
        subscriber.wait_assigned(SETUP_SECONDS / 2)
        return subscriber
    if spec.shim == "zmq":
        from proxystore_stream.shims import zmq

        # The presence topic goes second: a producer that has seen it knows
        # the forwarder holds this consumer's subscription to the stream.
        cls = zmq.AsyncZeroMQSubscriber if use_async else zmq.ZeroMQSubscriber
        return cls(spec.zmq_backend, topic=[spec.topic, spec.presence_topic(index)])
    if spec.shim == "redis":
        from proxystore_stream.shims import redis

        cls = redis.AsyncRedisSubscriber if use_async else redis.RedisSubscriber
        return cls.from_url(spec.redis_url, spec.topic)
    if spec.shim == "redis-queue":
        from proxystore_stream.shims import redis

        cls = redis.AsyncRedisQueueSubscriber if use_async else redis.RedisQueueSubscriber
        return cls.from_url(spec.redis_url, spec.topic)
    if spec.shim == "redis-stream":
        from proxystore_stream.shims import redis

        cls = redis.AsyncRedisStreamSubscriber if use_async else redis.RedisStreamSubscriber
        return cls.from_url(
            spec.redis_url,
            spec.topic,
            group=spec.topic,
            consumer=f"consumer-{index}",
        )
    from proxystore_stream.shims import rabbitmq

    cls = rabbitmq.AsyncRabbitMQSubscriber if use_async else rabbitmq.RabbitMQSubscriber
    if spec.shim == "rabbitmq":
        return cls(spec.topic, url=spec.rabbitmq_url, mode="fanout")
    return cls(spec.topic, url=spec.rabbitmq_url, mode="queue", queue_arguments=_QUEUE_ARGS)


def _open_store(spec: Spec) -> Any:
    if spec.store == "none":
        return None
    from proxystore_stream.store.base import Store

    if spec.store == "file":
        from proxystore_stream.store.connectors.file import FileConnector

        return Store(f"soak-{spec.topic}", FileConnector(spec.store_dir))
    from proxystore_stream.store.connectors.memory import MemoryConnector

    return Store(f"soak-{spec.topic}", MemoryConnector())


async def _opened(endpoint: Any) -> Any:
    """`endpoint` ready to use: connected and subscribed now.

    An endpoint an async constructor is still making (Kafka's
    ``from_bootstrap``) is awaited first; then its async ``open()`` runs, and
    a Kafka subscriber waits until it holds its partitions.
    """
    if inspect.isawaitable(endpoint):
        endpoint = await endpoint
    open_ = getattr(endpoint, "open", None)
    if open_ is not None:
        await open_()
    wait_assigned = getattr(endpoint, "wait_assigned", None)
    if wait_assigned is not None:
        await wait_assigned(SETUP_SECONDS / 2)
    return endpoint


_ZMQ_WAIT = SETUP_SECONDS / 2
"""Seconds a ZeroMQ producer waits for the consumers at most."""


def _await_consumers(spec: Spec, publisher: Any) -> None:
    """A ZeroMQ producer waits until every consumer's subscription reached it.

    ZeroMQ drops what is sent before a subscription arrived (the slow
    joiner). Through the forwarder a publisher cannot count subscribers of
    one topic (its XSUB side passes each topic on once), so every consumer
    also subscribes to a topic of its own, after the stream's; a producer
    that has seen all of those may send.
    """
    if spec.shim == "zmq":
        for consumer in range(spec.consumers):
            publisher.wait_for_subscribers(spec.presence_topic(consumer), timeout=_ZMQ_WAIT)


async def _await_consumers_async(spec: Spec, publisher: Any) -> None:
    """`_await_consumers` for an async publisher."""
    if spec.shim == "zmq":
        for consumer in range(spec.consumers):
            await publisher.wait_for_subscribers(spec.presence_topic(consumer), timeout=_ZMQ_WAIT)


# --- the counting, shared by the sync and async loops -------------------------


def _ready(shared: Shared, label: str) -> bool:
    """Report ready and wait for the start; False if it never came."""
    shared.results.put(("ready", label, None))
    return bool(shared.go.wait(SETUP_SECONDS))


async def _ready_async(shared: Shared, label: str) -> bool:
    """`_ready` without blocking the event loop (other roles may share it)."""
    shared.results.put(("ready", label, None))
    deadline = time.monotonic() + SETUP_SECONDS
    while not shared.go.is_set():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(GO_POLL_SECONDS)
    return True


class _Pacer:
    """A producer's plan: which object goes next, and when to stop or hold back.

    Flow control: at most `spec.max_in_flight` messages sent but not yet
    received (per consumer on fan-out shims), so the broker's backlog stays
    bounded whatever the relative speeds.
    """

    def __init__(self, spec: Spec, shared: Shared, index: int) -> None:
        self._spec = spec
        self._shared = shared
        self._index = index
        self.label = f"producer {index}"
        self._body = b"\xa5" * (spec.size - _HEADER.size)
        self.evict = not spec.fanout
        """On fan-out shims several consumers read each stored object: none evicts it."""
        self.seq = 0
        self._start = self._deadline = 0.0
        self._every = spec.count_every

    def begin(self) -> None:
        self._start = time.monotonic()
        self._deadline = self._start + self._spec.seconds

    def due(self) -> bool:
        """Whether to send another object (False once the time is up)."""
        if self.seq % self._every:
            return True
        self._shared.sent[self._index] = self.seq
        return time.monotonic() < self._deadline

    def held_back(self) -> bool:
        """Whether flow control holds the next send back (sleep a little, then ask again)."""
        return (
            not self.seq % self._every
            and _in_flight(self._spec, self._shared) > self._spec.max_in_flight
            and time.monotonic() < self._deadline
        )

    def next_object(self) -> tuple[bytes, dict[str, int]]:
        """The next payload and its metadata (producer index, sequence number)."""
        index, seq = self._index, self.seq
        self.seq += 1
        return _HEADER.pack(index, seq) + self._body, {"p": index, "s": seq}

    def finish(self) -> None:
        self._shared.sent[self._index] = self.seq
        elapsed = time.monotonic() - self._start
        self._shared.results.put(("producer", self.label, {"sent": self.seq, "seconds": elapsed}))


def _in_flight(spec: Spec, shared: Shared) -> int:
    """Objects sent and not yet received (on fan-out shims: by the slowest consumer)."""
    delivered = int(min(shared.received)) if spec.fanout else int(sum(shared.received))
    return int(sum(shared.sent)) - delivered


class _Checker:
    """A consumer's tally: checks each payload against its metadata, marks what arrived."""

    def __init__(self, spec: Spec, shared: Shared, index: int) -> None:
        self._spec = spec
        self._shared = shared
        self._index = index
        self.label = f"consumer {index}"
        self._bitmaps = [bytearray() for _ in range(spec.producers)]
        self.received = 0
        self._corrupt = 0
        self._last = 0.0
        self._every = spec.count_every

    def publish(self) -> bool:
        """Publish the count; True if the consumers were told to stop."""
        self._shared.received[self._index] = self.received
        return bool(self._shared.stop.is_set())

    def record(self, metadata: dict[str, Any], data: bytes) -> bool:
        """Count one delivery; True if it is time to stop (checked every `count_every`)."""
        self._last = time.monotonic()
        self.received += 1
        producer, seq = metadata.get("p"), metadata.get("s")
        if (
            type(producer) is not int
            or type(seq) is not int
            or not 0 <= producer < self._spec.producers
            or seq < 0
            or len(data) != self._spec.size
            or _HEADER.unpack_from(data) != (producer, seq)
        ):
            self._corrupt += 1
            return False
        bitmap = self._bitmaps[producer]
        byte = seq >> 3
        if byte >= len(bitmap):
            bitmap.extend(bytes(max(byte + 1 - len(bitmap), len(bitmap))))
        bitmap[byte] |= 1 << (seq & 7)
        return not self.received % self._every and self.publish()

    def finish(self) -> None:
        self.publish()
        self._shared.results.put(
            (
                "consumer",
                self.label,
                {
                    "received": self.received,
                    "corrupt": self._corrupt,
                    "bitmaps": [bytes(b) for b in self._bitmaps],
                    "last": self._last,
                },
            ),
        )


# --- the loops -------------------------------------------------------------------


def _produce(spec: Spec, shared: Shared, index: int, publisher: Any, store: Any) -> None:
    """Send for `spec.seconds`, then report the count (runs in a process or thread)."""
    from proxystore_stream.producer import StreamProducer

    pacer = _Pacer(spec, shared, index)
    producer: StreamProducer[bytes] = StreamProducer(
        publisher,
        default_store=store,
        batch_size=spec.batch_size,
    )
    if not _ready(shared, pacer.label):
        return
    pacer.begin()
    while pacer.due():
        while pacer.held_back():
            time.sleep(HOLD_SECONDS)
        payload, metadata = pacer.next_object()
        producer.send(spec.topic, payload, evict=pacer.evict, metadata=metadata)
    producer.flush()
    pacer.finish()


async def _produce_async(
    spec: Spec,
    shared: Shared,
    index: int,
    publisher: Any,
    store: Any,
) -> None:
    """Async twin of `_produce` (`AsyncStreamProducer`)."""
    from proxystore_stream.producer import AsyncStreamProducer

    pacer = _Pacer(spec, shared, index)
    producer: AsyncStreamProducer[bytes] = AsyncStreamProducer(
        publisher,
        default_store=store,
        batch_size=spec.batch_size,
    )
    if not await _ready_async(shared, pacer.label):
        return
    pacer.begin()
    while pacer.due():
        while pacer.held_back():
            await asyncio.sleep(HOLD_SECONDS)
        payload, metadata = pacer.next_object()
        await producer.send(spec.topic, payload, evict=pacer.evict, metadata=metadata)
    await producer.flush()
    pacer.finish()


def _consume(spec: Spec, shared: Shared, index: int, subscriber: Any) -> None:
    """Receive until told to stop, then report what arrived (process or thread)."""
    from proxystore_stream.consumer import StreamConsumer
    from proxystore_stream.exceptions import StreamTimeoutError

    checker = _Checker(spec, shared, index)
    consumer: StreamConsumer[bytes] = StreamConsumer(subscriber)
    if not _ready(shared, checker.label):
        return
    while True:
        try:
            metadata, data = consumer.next_object_with_metadata(POLL_SECONDS)
        except StreamTimeoutError:
            if checker.publish():
                break
            continue
        except StopIteration:
            break
        if checker.record(metadata, data):
            break
    ack = getattr(subscriber, "ack", None)
    if ack is not None:
        with contextlib.suppress(Exception):
            ack()  # the last message is otherwise acknowledged only by the next receive
    checker.finish()


async def _consume_async(spec: Spec, shared: Shared, index: int, subscriber: Any) -> None:
    """Async twin of `_consume` (`AsyncStreamConsumer`)."""
    from proxystore_stream.consumer import AsyncStreamConsumer
    from proxystore_stream.exceptions import StreamTimeoutError

    checker = _Checker(spec, shared, index)
    consumer: AsyncStreamConsumer[bytes] = AsyncStreamConsumer(subscriber)
    if not await _ready_async(shared, checker.label):
        return
    while True:
        try:
            metadata, data = await consumer.next_object_with_metadata(POLL_SECONDS)
        except StreamTimeoutError:
            if checker.publish():
                break
            continue
        except StopAsyncIteration:
            break
        if checker.record(metadata, data):
            break
    ack = getattr(subscriber, "ack", None)
    if ack is not None:
        with contextlib.suppress(Exception):
            await ack()  # the last message is otherwise acknowledged only by the next receive
    checker.finish()


# --- entry points ------------------------------------------------------------------


def _guarded(shared: Shared, label: str, work: Callable[[], None]) -> None:
    try:
        work()
    except BaseException as exc:  # reported to the parent, which fails the run
        shared.results.put(("error", label, f"{type(exc).__name__}: {exc}"))


async def _guarded_async(shared: Shared, label: str, work: Awaitable[None]) -> None:
    try:
        await work
    except BaseException as exc:  # reported to the parent, which fails the run
        shared.results.put(("error", label, f"{type(exc).__name__}: {exc}"))


def role_main(spec: Spec, shared: Shared, role: str, index: int) -> None:
    """Entry point of one producer or consumer process."""
    label = f"{role} {index}"
    sampler = _RssSampler()
    if spec.use_async:
        try:
            _guarded(
                shared,
                label,
                lambda: asyncio.run(_role_async(spec, shared, role, index, sampler)),
            )
        finally:
            shared.results.put(("memory", label, sampler.report()))
        return
    endpoint: Any = None

    def run() -> None:
        nonlocal endpoint
        sampler.begin_on_go(shared)
        if role == "producer":
            store = _open_store(spec)
            endpoint = open_publisher(spec, shared)
            _await_consumers(spec, endpoint)
            _produce(spec, shared, index, endpoint, store)
        else:
            endpoint = _open_subscriber(spec, shared, index)
            _consume(spec, shared, index, endpoint)
        sampler.end()

    try:
        _guarded(shared, label, run)
    finally:
        if endpoint is not None:
            with contextlib.suppress(Exception):
                endpoint.close()
        shared.results.put(("memory", label, sampler.report()))


async def _role_async(
    spec: Spec,
    shared: Shared,
    role: str,
    index: int,
    sampler: _RssSampler,
) -> None:
    """One role as the one task of this process's event loop (``--async``)."""
    sampler.begin_on_go(shared)
    endpoint: Any = None
    try:
        if role == "producer":
            store = _open_store(spec)
            endpoint = await _opened(open_publisher(spec, shared))
            await _await_consumers_async(spec, endpoint)
            await _produce_async(spec, shared, index, endpoint, store)
        else:
            endpoint = await _opened(_open_subscriber(spec, shared, index))
            await _consume_async(spec, shared, index, endpoint)
        sampler.end()
    finally:
        if endpoint is not None:
            with contextlib.suppress(Exception):
                await endpoint.close()


def in_process_main(spec: Spec, shared: Shared) -> None:
    """Entry point of the one process of the ``local`` shim: a thread (or task) per role."""
    sampler = _RssSampler()
    endpoints: list[Any] = []
    try:
        if spec.use_async:
            asyncio.run(_tasks(spec, shared, sampler, endpoints))
        else:
            _threads(spec, shared, sampler, endpoints)
        sampler.end()
    except BaseException as exc:
        shared.results.put(("error", "threads", f"{type(exc).__name__}: {exc}"))
    finally:
        for endpoint in endpoints:
            with contextlib.suppress(Exception):
                endpoint.close()
        shared.results.put(("memory", "threads", sampler.report()))


def _threads(spec: Spec, shared: Shared, sampler: _RssSampler, endpoints: list[Any]) -> None:
    from proxystore_stream.shims.local import LocalBroker
    from proxystore_stream.shims.local import LocalPublisher
    from proxystore_stream.shims.local import LocalSubscriber

    broker = LocalBroker()
    store = _open_store(spec)
    threads: list[threading.Thread] = []
    for index in range(spec.consumers):
        subscriber = LocalSubscriber(broker, spec.topic, maxsize=LOCAL_MAXSIZE)
        endpoints.append(subscriber)
        work = _bound(_consume, spec, shared, index, subscriber)
        threads.append(_thread(shared, f"consumer {index}", work))
    for index in range(spec.producers):
        # A send waits for room at most this long: a dead consumer is an error, not a hang.
        publisher = LocalPublisher(broker, timeout=30.0)
        endpoints.append(publisher)
        work = _bound(_produce, spec, shared, index, publisher, store)
        threads.append(_thread(shared, f"producer {index}", work))
    for thread in threads:
        thread.start()
    if shared.go.wait(SETUP_SECONDS):
        sampler.begin()
    deadline = time.monotonic() + SETUP_SECONDS + spec.seconds + REPORT_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


async def _tasks(spec: Spec, shared: Shared, sampler: _RssSampler, endpoints: list[Any]) -> None:
    """`_threads` on one event loop: a task per role (``--async``)."""
    from proxystore_stream.shims.local import AsyncLocalPublisher
    from proxystore_stream.shims.local import AsyncLocalSubscriber
    from proxystore_stream.shims.local import LocalBroker

    broker = LocalBroker()
    store = _open_store(spec)
    roles: list[Awaitable[None]] = []
    for index in range(spec.consumers):
        subscriber = AsyncLocalSubscriber(broker, spec.topic, maxsize=LOCAL_MAXSIZE)
        endpoints.append(subscriber)
        work = _consume_async(spec, shared, index, subscriber)
        roles.append(_guarded_async(shared, f"consumer {index}", work))
    for index in range(spec.producers):
        publisher = AsyncLocalPublisher(broker, timeout=30.0)
        endpoints.append(publisher)
        work = _produce_async(spec, shared, index, publisher, store)
        roles.append(_guarded_async(shared, f"producer {index}", work))
    sampler.begin_on_go(shared)
    budget = SETUP_SECONDS + spec.seconds + REPORT_SECONDS
    try:
        await asyncio.wait_for(asyncio.gather(*roles), budget)
    finally:
        # The local endpoints' close() is async here; the caller's sync close() is skipped.
        for endpoint in endpoints:
            with contextlib.suppress(Exception):
                await endpoint.close()
        endpoints.clear()


def _bound(work: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: work(*args)


def _thread(shared: Shared, label: str, work: Callable[[], None]) -> threading.Thread:
    return threading.Thread(
        target=_guarded,
        args=(shared, label, work),
        name=f"soak-{label}",
        daemon=True,
    )
