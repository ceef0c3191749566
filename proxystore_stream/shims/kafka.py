"""Shim over Apache Kafka (kafka-python; aiokafka for the async twins).

| property | behaviour |
| --- | --- |
| semantics | consumer group: a partition goes to one member of a `group_id` |
| persistence | kept for the topic's retention; new groups start at the earliest |
| ordering | per partition; topics created here have one, so per topic |
| no subscriber | kept; a later group reads from its committed offset or earliest |
| acknowledgement | commit after a message when the next is asked for, or `ack()` |
| max message size | `max_request_size` (1 MiB default), `message.max.bytes` |

Within one group each message goes to one member (a work queue); every
group gets every message (fan-out across groups). Only handed-over messages
are ever committed, never those merely fetched. Messages above 1 MiB need a
larger producer `max_request_size`, broker `message.max.bytes` and consumer
`max_partition_fetch_bytes`.

The publisher never flushes per message: `send()` hands the message to the
client's batching buffer and `flush()` (called by the stream producer when
topics are flushed or closed) waits for the broker's acknowledgement of all
of them. `close()` flushes, then closes. At most `max_pending_bytes` (64 MiB)
are unacknowledged: beyond that `send()` blocks until the broker catches up.

Reconnection: the clients reconnect by themselves (kafka-python's producer
retries undelivered batches in order, idempotently, with ``acks="all"``);
the shim bounds the waiting with a `RetryPolicy` (``retry=``): `send()`,
`flush()` and `close()` raise `BrokerConnectionError` once no message was
acknowledged for ``retry.deadline`` seconds, `receive()` once the client
held no broker connection that long, and `ack()` once a commit did not go
through. A message whose delivery failed is reported by the next `send()`
or `flush()`, never dropped silently.

The subscriber buffers what the client fetches and hands messages over one
at a time. Acknowledged offsets are committed asynchronously every 0.5 s
while receiving, also while the buffer is served (so a crash redelivers at
most that window, which at-least-once allows), and synchronously on
`ack()`, on partition revocation (a rebalance) and on `close()`. On
revocation the message handed over last counts as acknowledged and the
buffered messages of the revoked partitions are dropped, so the next owner
starts right after what this member handed over: no duplicates and no gaps
across a rebalance. `close()` does not
acknowledge the last handed message: it is redelivered to the group.

Topics are created (one partition) before first use when the shim can reach
an admin API, so subscribers never race the broker's auto-creation (which
may create several partitions). Pass `create_topics=False` to skip this.

Group membership changes complete while members poll: a member that does not
call `receive()` delays a rebalance up to its `max_poll_interval_ms`.
`wait_assigned()` polls until this member holds its share of the group.

A confluent-kafka `Producer`/`Consumer` is accepted too (detected by its
`produce`/`consume` methods); it is about 10x faster than kafka-python for
small messages. kafka-python stays the default.

Example:
    ```python
    publisher = KafkaPublisher.from_bootstrap("127.0.0.1:9092")
    subscriber = KafkaSubscriber.from_bootstrap(
        "127.0.0.1:9092", ["frames"], group_id="workers",
    )
    ```
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple
from typing import Self

from proxystore_stream._context import AsyncClosingContext
from proxystore_stream._context import ClosingContext
from proxystore_stream._offload import SLICE_SECONDS
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import StreamError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.exceptions import require
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims._errors import map_errors

try:
    import kafka
    import kafka.errors
    from kafka.admin import NewTopic
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    require(__name__, "kafka", "kafka", e)
try:
    import aiokafka
    import aiokafka.admin
    import aiokafka.errors
except ImportError as e:  # pragma: no cover
    require(__name__, "aiokafka", "kafka", e)

__all__ = [
    "AsyncKafkaPublisher",
    "AsyncKafkaSubscriber",
    "KafkaPublisher",
    "KafkaSubscriber",
    "create_topics",
    "delete_topics",
]

logger = logging.getLogger(__name__)

# Acknowledged offsets are committed at most this often while receiving.
COMMIT_INTERVAL = 0.5
# A consumer serving its buffer still polls the client this often.
KEEPALIVE = 1.0
# How long close() waits for a receive in another thread to leave the client.
_CLOSE_WAIT = 10.0
_DEFAULT_TIMEOUT_MS = 5000
# Publishers block in send() while this many bytes are unacknowledged.
MAX_PENDING_BYTES = 64 * 1024 * 1024
# Producer batch size set by from_bootstrap (see _producer_defaults).
_BATCH_BYTES = 1024 * 1024
# Waits for the broker check the retry deadline this often.
_WAIT_SLICE = 0.5
# A wait for acknowledgements logs a warning once it lasted this long.
_WARN_AFTER = 2.0


def _errors(module: Any, *names: str) -> tuple[type[Exception], ...]:
    # Names differ across client versions (kafka-python 3 dropped NoBrokersAvailable).
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


_KAFKA_CONNECTION_ERRORS = _errors(
    kafka.errors,
    "NoBrokersAvailable",
    "KafkaConnectionError",
    "KafkaTimeoutError",
    "NodeNotReadyError",
)
_AIOKAFKA_CONNECTION_ERRORS = _errors(
    aiokafka.errors,
    "KafkaConnectionError",
    "KafkaTimeoutError",
    "NoBrokersAvailable",
    "NodeNotReadyError",
)
_ERRORS: dict[type[BaseException], type[StreamError]] = {
    cls: BrokerConnectionError for cls in _KAFKA_CONNECTION_ERRORS + _AIOKAFKA_CONNECTION_ERRORS
}


class _Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    value: bytes


# ---------------------------------------------------------------- pure helpers


class _Delivery:
    """Buffered records and the offsets a subscriber may commit (no I/O).

    A record is handed over by `take()`; it is acknowledged by the next
    `ack_handed()` (the next receive, or an explicit ack). `due()` returns
    the acknowledged positions (offset + 1 per partition) not committed yet.
    """

    def __init__(self) -> None:
        self.buffer: collections.deque[_Record] = collections.deque()
        self.handed: _Record | None = None
        self.acked: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.last_commit = self.last_poll = time.monotonic()
        self.assigned = False

    def take(self) -> _Record | None:
        if not self.buffer:
            return None
        self.handed = self.buffer.popleft()
        return self.handed

    def ready(self) -> bool:
        """Whether the next message can be taken without polling the client.

        Kafka evicts a member that does not poll within its
        max_poll_interval_ms, so even with a full buffer the client is
        polled every KEEPALIVE seconds; and acknowledged offsets are
        committed every COMMIT_INTERVAL while serving the buffer, so a
        crash redelivers at most that window.
        """
        if not self.buffer:
            return False
        now = time.monotonic()
        return now - self.last_poll < KEEPALIVE and now - self.last_commit < COMMIT_INTERVAL

    def extend(self, batches: Mapping[Any, Iterable[Any]]) -> None:
        """Buffer the records of a kafka-python/aiokafka poll result."""
        self.last_poll = time.monotonic()
        for records in batches.values():
            self.buffer.extend(_Record(r.topic, r.partition, r.offset, r.value) for r in records)

    def ack_handed(self) -> None:
        if self.handed is not None:
            record, self.handed = self.handed, None
            self.acked[(record.topic, record.partition)] = record.offset + 1

    def due(self, *, now: float | None = None) -> dict[tuple[str, int], int]:
        """Acknowledged positions to commit (all of them if `now` is None).

        With `now`, nothing is due until COMMIT_INTERVAL passed since the
        last commit.
        """
        if now is not None:
            if now - self.last_commit < COMMIT_INTERVAL:
                return {}
            self.last_commit = now  # checked now, even if nothing is due
        return {tp: o for tp, o in self.acked.items() if self.committed.get(tp) != o}

    def mark_committed(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.committed.update(offsets)
        self.last_commit = time.monotonic()

    def forget_commits(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Mark commits that failed as not done, so they are due again."""
        for tp, offset in offsets.items():
            if self.committed.get(tp) == offset:
                del self.committed[tp]

    def revoke(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Forget revoked partitions; return their positions to commit now."""
        revoked = set(partitions)
        if self.handed is not None and (self.handed.topic, self.handed.partition) in revoked:
            self.ack_handed()
        self.buffer = collections.deque(
            r for r in self.buffer if (r.topic, r.partition) not in revoked
        )
        due = {tp: o for tp, o in self.due().items() if tp in revoked}
        for tp in revoked:
            self.acked.pop(tp, None)
            self.committed.pop(tp, None)
        self.assigned = False
        return due


class _Outage:
    """How long a subscriber's client has held no broker connection."""

    def __init__(self, deadline: float, broker: str) -> None:
        self.deadline = deadline
        self.broker = broker
        self.since: float | None = None

    def clear(self) -> None:
        if self.since is not None:
            logger.info(
                "%s reachable again after %.1f s", self.broker, time.monotonic() - self.since
            )
            self.since = None

    def check(self, connected: bool) -> None:
        """Note the connection state; raise once it was down for the deadline."""
        if connected:
            self.clear()
            return
        now = time.monotonic()
        if self.since is None:
            self.since = now
            logger.warning(
                "%s unreachable; the client reconnects, giving up after %s s",
                self.broker,
                self.deadline,
            )
        elif now - self.since >= self.deadline:
            raise BrokerConnectionError(
                f"no broker connection for {now - self.since:.1f} s (deadline {self.deadline} s)",
                broker=self.broker,
            )


def _check_send(topic: str, message: bytes) -> None:
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"topic must be a non-empty str, not {topic!r}")
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise TypeError(f"message must be bytes, not {type(message).__name__}")


def _check_retry(retry: RetryPolicy | None) -> RetryPolicy:
    if retry is None:
        return RetryPolicy()
    if not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
    return retry


def _check_max_pending(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"max_pending_bytes must be an int or None, not {type(limit).__name__}")
    if limit <= 0:
        raise ValueError(f"max_pending_bytes must be > 0, not {limit}")
    return limit


def _check_topics(topics: Sequence[str]) -> list[str]:
    if isinstance(topics, str) or not all(isinstance(t, str) and t for t in topics):
        raise TypeError(f"topics must be a sequence of non-empty str, not {topics!r}")
    if not topics:
        raise ValueError("topics must name at least one topic")
    return list(topics)


def _deadline(timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    return None if timeout is None else time.monotonic() + timeout


def _slice(deadline: float | None) -> float:
    if deadline is None:
        return SLICE_SECONDS
    return max(0.0, min(SLICE_SECONDS, deadline - time.monotonic()))


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _reject_auto_commit(enabled: Any) -> None:
    if enabled:
        raise ValueError(
            "enable_auto_commit must be False: auto-commit commits offsets of "
            "messages fetched but not yet handed over, which loses them if "
            "this process stops. Create the consumer with "
            "enable_auto_commit=False (from_bootstrap does).",
        )


def _describe(servers: Any) -> str:
    if isinstance(servers, str):
        return f"kafka://{servers}"
    if isinstance(servers, Iterable):
        return "kafka://" + ",".join(map(str, servers))
    return "kafka"


def _is_confluent_producer(client: Any) -> bool:
    return hasattr(client, "produce") and not hasattr(client, "send")


def _is_confluent_consumer(client: Any) -> bool:
    return hasattr(client, "consume") and hasattr(client, "store_offsets")


def _admin_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    allowed = kafka.KafkaAdminClient.DEFAULT_CONFIG
    skip = {"client_id", "metrics_reporters", "metric_reporters"}
    return {k: v for k, v in config.items() if k in allowed and k not in skip}


def create_topics(
    servers: str | Sequence[str],
    topics: Iterable[str],
    *,
    num_partitions: int = 1,
    replication_factor: int = 1,
    **kwargs: Any,
) -> None:
    """Create topics that do not exist yet (existing ones are left alone).

    Args:
        servers: Bootstrap servers (``"host:port"`` or a list of them).
        topics: Topic names.
        num_partitions: Partitions of each new topic (order holds per partition).
        replication_factor: Replicas of each new topic.
        **kwargs: Passed to `kafka.KafkaAdminClient` (SASL/SSL settings...).

    Raises:
        BrokerConnectionError: If the broker cannot be reached.
    """
    kwargs.setdefault("bootstrap_timeout_ms", _DEFAULT_TIMEOUT_MS)
    with map_errors(_ERRORS, broker=_describe(servers)):
        admin = kafka.KafkaAdminClient(bootstrap_servers=servers, **kwargs)
        try:
            _create_with(admin, topics, num_partitions, replication_factor)
        finally:
            admin.close()


def delete_topics(servers: str | Sequence[str], topics: Iterable[str], **kwargs: Any) -> None:
    """Delete topics, with every message they hold (missing ones are left alone).

    Args:
        servers: Bootstrap servers (``"host:port"`` or a list of them).
        topics: Topic names.
        **kwargs: Passed to `kafka.KafkaAdminClient` (SASL/SSL settings...).

    Raises:
        BrokerConnectionError: If the broker cannot be reached.
    """
    names = list(topics)
    if not names:
        return
    kwargs.setdefault("bootstrap_timeout_ms", _DEFAULT_TIMEOUT_MS)
    with map_errors(_ERRORS, broker=_describe(servers)):
        admin = kafka.KafkaAdminClient(bootstrap_servers=servers, **kwargs)
        try:
            with contextlib.suppress(kafka.errors.UnknownTopicOrPartitionError):
                admin.delete_topics(names)
        finally:
            admin.close()


def _create_with(
    admin: Any,
    topics: Iterable[str],
    num_partitions: int = 1,
    replication_factor: int = 1,
) -> None:
    new = [NewTopic(t, num_partitions, replication_factor) for t in topics]
    if not new:
        return
    # Other per-topic errors (e.g. not authorised) surface on first use.
    with contextlib.suppress(kafka.errors.TopicAlreadyExistsError):
        admin.create_topics(new)


# ------------------------------------------------------------------- publishers


class _Ledger:
    """Messages handed to a producer client and not yet settled (thread-safe).

    Each message is settled once, delivered or failed:

    - kafka-python: `track` queues the record's future and `sweep` settles
      the done ones at the head of the queue, on the sending thread. That
      costs less than registering a callback pair per record, which the
      client's I/O thread then runs under a lock (4.6 us per 100 B message
      over a bare `send`; now 1.2 us).
    - confluent-kafka: its delivery reports call `settle` inside
      poll()/flush().

    Waiters tell a slow broker (settlements keep coming) from an absent one
    (none for the retry deadline).
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.pending = 0
        self.pending_bytes = 0
        self.settled = 0
        self.failed = 0
        self.error: BaseException | None = None
        self._waiters = 0
        self._tracked: collections.deque[tuple[Any, int]] = collections.deque()
        self._sweeping = threading.Lock()

    def add(self, size: int) -> None:
        with self.cond:
            self.pending += 1
            self.pending_bytes += size

    def track(self, future: Any, size: int) -> None:
        """Count a kafka-python record as pending until `sweep` finds its future done."""
        self.add(size)
        self._tracked.append((future, size))

    def sweep(self) -> None:
        """Settle the tracked records, oldest first, whose futures are done."""
        tracked = self._tracked
        if not tracked or not tracked[0][0].is_done or not self._sweeping.acquire(False):
            return
        try:
            count = size = failed = 0
            error: BaseException | None = None
            while tracked and tracked[0][0].is_done:
                future, nbytes = tracked.popleft()
                count += 1
                size += nbytes
                if future.exception is not None:
                    failed += 1
                    error = error or future.exception
            self._settle(count, size, failed, error)
        finally:
            self._sweeping.release()

    def undelivered(self, size: int, error: BaseException) -> None:
        self.settle(size, error)

    def settle(self, size: int, error: BaseException | None) -> None:
        self._settle(1, size, 0 if error is None else 1, error)

    def _settle(self, count: int, size: int, failed: int, error: BaseException | None) -> None:
        with self.cond:
            self.pending -= count
            self.pending_bytes -= max(size, 0)
            self.settled += count
            if failed:
                self.failed += failed
                if self.error is None:
                    self.error = error
            if self._waiters:
                self.cond.notify_all()

    def take_failures(self) -> tuple[int, BaseException | None]:
        with self.cond:
            failed, error = self.failed, self.error
            self.failed, self.error = 0, None
            return failed, error

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait up to `timeout` s for `done()` (checked under the lock), settling meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            self.sweep()
            with self.cond:
                if done():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                head = self._tracked[0][0] if self._tracked else None
                if head is None:  # settlements notify (confluent-kafka reports)
                    self._waiters += 1
                    try:
                        return self.cond.wait_for(done, remaining)
                    finally:
                        self._waiters -= 1
            # The oldest tracked record wakes this waiter when it is done.
            head.add_both(self._wake)
            with self.cond:
                if not head.is_done:
                    self.cond.wait(remaining)

    def _wake(self, _result: Any) -> None:
        with self.cond:
            self.cond.notify_all()


class _Stall:
    """Raises BrokerConnectionError when no message settled for `deadline` s."""

    def __init__(self, ledger: _Ledger, deadline: float, broker: str, what: str) -> None:
        self.ledger = ledger
        self.deadline = deadline
        self.broker = broker
        self.what = what
        self.settled = ledger.settled
        self.since = time.monotonic()
        self.warned = False

    def check(self) -> None:
        now = time.monotonic()
        if self.ledger.settled != self.settled:
            self.settled, self.since = self.ledger.settled, now
            return
        stalled = now - self.since
        if stalled >= self.deadline:
            raise BrokerConnectionError(
                f"{self.what}: no acknowledgement from the broker for {stalled:.1f} s "
                f"(deadline {self.deadline} s); {self.ledger.pending} message(s) "
                "are still buffered in the client",
                broker=self.broker,
            )
        if not self.warned and stalled >= _WARN_AFTER:
            self.warned = True
            logger.warning(
                "%s: no acknowledgement from %s for %.1f s; waiting up to %s s",
                self.what,
                self.broker,
                stalled,
                self.deadline,
            )


def _producer_defaults(kwargs: dict[str, Any], policy: RetryPolicy) -> None:
    """Fill in kafka-python producer settings the shim relies on (callers win)."""
    _reconnect_defaults(kwargs, policy)
    kwargs.setdefault("bootstrap_timeout_ms", _DEFAULT_TIMEOUT_MS)
    kwargs.setdefault("max_block_ms", max(100, min(_DEFAULT_TIMEOUT_MS, _ms(policy.deadline))))
    kwargs.setdefault("acks", "all")
    # kafka-python spends about as much per batch as per record: with its
    # 16 KiB default, 10 KiB records go one per batch (770 msg/s sent here,
    # 640 us CPU each); 1 MiB batches sent 7,400 msg/s (62 us). A batch
    # holds what arrived while the previous request was out (linger stays
    # 0), so small bursts still leave at once.
    kwargs.setdefault("batch_size", _BATCH_BYTES)
    # Records wait in the client while the broker is away; they must not
    # expire before the shim's own deadline has raised.
    kwargs.setdefault("delivery_timeout_ms", max(120_000, _ms(policy.deadline) + 30_000))


def _reconnect_defaults(kwargs: dict[str, Any], policy: RetryPolicy) -> None:
    # kafka-python reconnects by itself (exponential backoff, +-20 % jitter);
    # bound it by the policy instead of the client's 30 s maximum.
    kwargs.setdefault("reconnect_backoff_ms", max(1, _ms(policy.initial)))
    kwargs.setdefault(
        "reconnect_backoff_max_ms",
        max(kwargs["reconnect_backoff_ms"], _ms(policy.maximum)),
    )


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class KafkaPublisher(ClosingContext):
    """Publisher over a `kafka.KafkaProducer` (or a confluent-kafka `Producer`).

    Messages are batched by the client; nothing is flushed per message. The
    client reconnects by itself and retries undelivered batches in order;
    the shim bounds how long it waits (see `retry`) and how much it buffers.

    Args:
        client: The producer. It is closed by `close()`.
        create_topics: Create each topic (one partition) before its first
            send, so order holds per topic. Needs a kafka-python producer
            (its connection settings are reused for the admin client).
        retry: How long to wait for an absent broker: `send()` and `flush()`
            raise `BrokerConnectionError` once no message was acknowledged
            (and no send could start) for ``retry.deadline`` seconds. None
            means ``RetryPolicy()`` (30 s).
        max_pending_bytes: Bytes sent but not yet acknowledged at most;
            beyond it `send()` blocks until the broker catches up (raising
            `BrokerConnectionError` after the deadline). None: unbounded.

    Raises:
        TypeError: If `client` is not a producer or `retry` not a RetryPolicy.
        ValueError: If `max_pending_bytes` is not positive.
    """

    connection_errors = _KAFKA_CONNECTION_ERRORS

    def __init__(
        self,
        client: Any,
        *,
        create_topics: bool = True,
        retry: RetryPolicy | None = None,
        max_pending_bytes: int | None = MAX_PENDING_BYTES,
    ) -> None:
        self._client = client
        self._confluent = _is_confluent_producer(client)
        if not self._confluent and not hasattr(client, "send"):
            raise TypeError(
                "client must be a kafka.KafkaProducer or confluent_kafka.Producer, "
                f"not {type(client).__name__}",
            )
        self._retry = _check_retry(retry)
        self._max_pending = _check_max_pending(max_pending_bytes)
        config = {} if self._confluent else dict(getattr(client, "config", {}))
        self._broker = _describe(config.get("bootstrap_servers"))
        self._create = create_topics and not self._confluent and bool(config)
        self._admin_config = _admin_kwargs(config)
        self._admin: Any = None
        self._known: set[str] = set()
        self._ledger = _Ledger()
        self._closed = False
        self.flush_calls = 0

    @classmethod
    def from_bootstrap(
        cls,
        servers: str | Sequence[str],
        *,
        create_topics: bool = True,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a publisher with a new `kafka.KafkaProducer`.

        Args:
            servers: Bootstrap servers (``"host:port"`` or a list of them).
            create_topics: See the class.
            retry: See the class. Its ``initial``/``maximum`` also bound the
                client's reconnect backoff.
            **kwargs: Passed to `KafkaProducer` (``security_protocol``,
                ``sasl_mechanism``, ``ssl_cafile``, ``max_request_size``,
                ``linger_ms``, ``max_pending_bytes`` for the shim...).
                Defaults: ``acks="all"`` (idempotence stays on, the
                kafka-python 3 default), ``bootstrap_timeout_ms`` 5 s,
                ``max_block_ms`` 5 s (less if the deadline is shorter),
                ``delivery_timeout_ms`` the deadline + 30 s (at least 120 s).

        Raises:
            BrokerConnectionError: If the broker cannot be reached.
        """
        policy = _check_retry(retry)
        max_pending = kwargs.pop("max_pending_bytes", MAX_PENDING_BYTES)
        _producer_defaults(kwargs, policy)
        with map_errors(_ERRORS, broker=_describe(servers)):
            client = kafka.KafkaProducer(bootstrap_servers=servers, **kwargs)
        try:
            return cls(
                client,
                create_topics=create_topics,
                retry=policy,
                max_pending_bytes=max_pending,
            )
        except BaseException:
            client.close(timeout=0)
            raise

    def _ensure_topic(self, topic: str) -> None:
        if topic in self._known:
            return
        if self._create:
            if self._admin is None:
                self._admin = kafka.KafkaAdminClient(**self._admin_config)
            _create_with(self._admin, [topic])
        self._known.add(topic)

    def _raise_failure(self) -> None:
        failed, error = self._ledger.take_failures()
        if not failed:
            return
        if isinstance(error, kafka.errors.MessageSizeTooLargeError):
            raise ValueError(f"message is larger than the Kafka limit: {error}") from error
        raise BrokerConnectionError(
            f"{failed} message(s) were not delivered: {type(error).__name__}: {error}",
            broker=self._broker,
        ) from error

    def send(self, topic: str, message: bytes) -> None:
        """Hand a message to the client's batch for `topic` (no flush).

        Blocks while `max_pending_bytes` are unacknowledged, and retries
        while the broker is away (metadata of a new topic), both up to the
        retry deadline. A failed delivery of an earlier message is raised
        here or by the next `flush()`.

        Raises:
            TypeError: If `topic` or `message` has the wrong type.
            ValueError: If a message exceeds the producer's size limit.
            PublisherClosedError: If the publisher is closed.
            BrokerConnectionError: If the broker stayed away past the
                deadline, or earlier messages were not delivered.
        """
        if type(message) is not bytes or type(topic) is not str:
            _check_send(topic, message)
            message = bytes(message)
        if self._closed:
            raise PublisherClosedError("KafkaPublisher is closed")
        ledger = self._ledger
        ledger.sweep()
        if ledger.failed:
            self._raise_failure()
        if self._max_pending is not None and ledger.pending_bytes >= self._max_pending:
            self._wait_for_room()
        # The hot path: no context manager, no copy, no callbacks (see _Ledger).
        try:
            if topic not in self._known:
                self._ensure_topic(topic)
            if self._confluent:
                self._produce_confluent(topic, message)
                return
            future = self._client.send(topic, value=message)
        except kafka.errors.MessageSizeTooLargeError as error:
            raise ValueError(f"message is larger than the Kafka limit: {error}") from error
        except self.connection_errors as error:
            future = self._send_retrying(topic, message, error)
        ledger.track(future, len(message))

    def _send_retrying(self, topic: str, message: bytes, first: BaseException) -> Any:
        logger.warning("Kafka send to %r failed (%s); retrying", topic, first)

        def attempt() -> Any:
            self._ensure_topic(topic)
            return self._client.send(topic, value=message)

        try:
            return self._retry.call(attempt, retry_on=self.connection_errors, broker=self._broker)
        except kafka.errors.MessageSizeTooLargeError as error:
            raise ValueError(f"message is larger than the Kafka limit: {error}") from error

    def _produce_confluent(self, topic: str, message: bytes) -> None:
        ledger, size = self._ledger, len(message)

        def report(error: Any, _message: Any) -> None:
            if error is None:
                ledger.settle(size, None)
            else:
                ledger.undelivered(size, BrokerConnectionError(f"delivery failed: {error}"))

        stall: _Stall | None = None
        while True:
            try:
                self._client.produce(topic, message, on_delivery=report)
                break
            except BufferError:
                # librdkafka's local queue is full: serve delivery reports.
                stall = stall or _Stall(ledger, self._retry.deadline, self._broker, "send")
                stall.check()
                self._client.poll(SLICE_SECONDS)
        ledger.add(size)
        self._client.poll(0)

    def _wait_for_room(self) -> None:
        ledger, limit = self._ledger, self._max_pending
        stall = _Stall(ledger, self._retry.deadline, self._broker, "send")
        while not ledger.wait(lambda: ledger.pending_bytes < limit, _WAIT_SLICE):  # type: ignore[operator]
            if self._confluent:
                self._client.poll(0)
            stall.check()

    def flush(self) -> None:
        """Block until the broker acknowledged every message sent so far.

        Waits as long as acknowledgements keep arriving; raises once none
        arrived for the retry deadline. Messages still buffered then stay in
        the client (a later `flush()` delivers them if the broker returns).

        Raises:
            BrokerConnectionError: If the broker stayed away past the
                deadline, or messages were not delivered.
            ValueError: If a message was rejected as too large.
        """
        self.flush_calls += 1
        if self._closed:
            return
        self._flush()

    def _flush(self) -> None:
        ledger = self._ledger
        stall = _Stall(ledger, self._retry.deadline, self._broker, "flush")
        with map_errors(_ERRORS, broker=self._broker):
            while True:
                if self._confluent:
                    flushed = self._client.flush(_WAIT_SLICE) == 0
                else:
                    try:
                        self._client.flush(timeout=_WAIT_SLICE)
                        flushed = True
                    except kafka.errors.KafkaTimeoutError:
                        flushed = False
                # The client marks batches done just before it runs the
                # callbacks that settle them.
                if flushed and ledger.wait(lambda: ledger.pending == 0, _WAIT_SLICE):
                    break
                ledger.sweep()  # what a partial flush delivered counts as progress
                stall.check()
        self._raise_failure()

    def close(self) -> None:
        """Flush pending messages, then close the client (idempotent).

        Raises:
            BrokerConnectionError: If pending messages could not be
                delivered (the client is closed anyway, dropping them).
        """
        if self._closed:
            return
        self._closed = True
        delivered = False
        try:
            self._flush()
            delivered = True
        finally:
            if self._admin is not None:
                self._admin.close()
            if self._confluent:
                if not delivered and hasattr(self._client, "purge"):
                    # librdkafka's close waits for queued messages up to
                    # message.timeout.ms (300 s): drop them, they were reported.
                    self._client.purge()
                    self._client.poll(0)
                if hasattr(self._client, "close"):
                    self._client.close()
            elif delivered:
                self._client.close(timeout=_CLOSE_WAIT)
            else:
                self._abandon()

    def _abandon(self) -> None:
        # kafka-python's close() flushes first and, when that times out,
        # raises before it stops its IO thread. Stop the thread first (it
        # fails the undelivered batches), then close.
        sender = getattr(self._client, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(_CLOSE_WAIT)
        try:
            self._client.close(timeout=0)
        except kafka.errors.KafkaError as error:
            logger.warning("Closing the Kafka producer failed: %s", error)


class AsyncKafkaPublisher(AsyncClosingContext):
    """Async twin of `KafkaPublisher` over a started `aiokafka.AIOKafkaProducer`.

    Args:
        client: A started producer. It is stopped by `close()`.
        admin_config: Connection settings for an `AIOKafkaAdminClient` that
            creates topics (one partition) before their first send; None
            skips topic creation. `from_bootstrap` fills it in.
        retry: `flush()` raises `BrokerConnectionError` once no message was
            acknowledged for ``retry.deadline`` seconds. aiokafka expires
            a buffered batch after the producer's ``request_timeout_ms``;
            `from_bootstrap` sets that to the deadline (at least 5 s).
    """

    connection_errors = _AIOKAFKA_CONNECTION_ERRORS

    def __init__(
        self,
        client: Any,
        *,
        admin_config: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not hasattr(client, "send") or not hasattr(client, "flush"):
            raise TypeError(f"client must be an AIOKafkaProducer, not {type(client).__name__}")
        self._client = client
        self._retry = _check_retry(retry)
        self._admin_config = None if admin_config is None else dict(admin_config)
        self._broker = _describe((admin_config or {}).get("bootstrap_servers"))
        self._known: set[str] = set()
        self._pending: set[asyncio.Future[Any]] = set()
        self._settled = 0
        self._failed = 0
        self._error: BaseException | None = None
        self._closed = False
        self.flush_calls = 0

    @classmethod
    async def from_bootstrap(
        cls,
        servers: str | Sequence[str],
        *,
        create_topics: bool = True,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a publisher with a new, started `AIOKafkaProducer`.

        Args:
            servers: Bootstrap servers.
            create_topics: Create each topic (one partition) before its
                first send.
            retry: See the class; its ``initial``/``maximum`` also bound the
                client's reconnect backoff.
            **kwargs: Passed to `AIOKafkaProducer` (``security_protocol``,
                ``ssl_context``, ``sasl_*``, ``max_request_size``...).
                ``acks`` defaults to ``"all"``.

        Raises:
            BrokerConnectionError: If the broker cannot be reached.
        """
        policy = _check_retry(retry)
        kwargs.setdefault("request_timeout_ms", max(_DEFAULT_TIMEOUT_MS, _ms(policy.deadline)))
        kwargs.setdefault("retry_backoff_ms", max(1, _ms(policy.initial)))
        kwargs.setdefault("acks", "all")
        # As for kafka-python (see _producer_defaults).
        kwargs.setdefault("max_batch_size", _BATCH_BYTES)
        client = aiokafka.AIOKafkaProducer(bootstrap_servers=servers, **kwargs)
        await _start(client, servers)
        admin = None
        if create_topics:
            names = _async_admin_keys()
            admin = {k: v for k, v in kwargs.items() if k in names}
            admin["bootstrap_servers"] = servers
            admin["request_timeout_ms"] = _DEFAULT_TIMEOUT_MS
        return cls(client, admin_config=admin, retry=policy)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        self._settled += 1
        if not future.cancelled() and future.exception() is not None:
            self._failed += 1
            if self._error is None:
                self._error = future.exception()

    def _raise_failure(self) -> None:
        failed, error = self._failed, self._error
        if not failed:
            return
        self._failed, self._error = 0, None
        if isinstance(error, aiokafka.errors.MessageSizeTooLargeError):
            raise ValueError(f"message is larger than the Kafka limit: {error}") from error
        raise BrokerConnectionError(
            f"{failed} message(s) were not delivered: {type(error).__name__}: {error}",
            broker=self._broker,
        ) from error

    async def send(self, topic: str, message: bytes) -> None:
        """Add a message to the client's batch for `topic` (no flush).

        Raises:
            TypeError: If `topic` or `message` has the wrong type.
            ValueError: If the message exceeds the producer's size limit.
            PublisherClosedError: If the publisher is closed.
            BrokerConnectionError: If the broker stayed away past the
                deadline, or earlier messages were not delivered.
        """
        _check_send(topic, message)
        if self._closed:
            raise PublisherClosedError("AsyncKafkaPublisher is closed")
        self._raise_failure()
        try:
            if topic not in self._known:
                await self._ensure_topic(topic)
            future = await self._client.send(topic, bytes(message))
        except aiokafka.errors.MessageSizeTooLargeError as error:
            raise ValueError(f"message is larger than the Kafka limit: {error}") from error
        except self.connection_errors as error:
            future = await self._send_retrying(topic, bytes(message), error)
        self._pending.add(future)
        future.add_done_callback(self._done)

    async def _ensure_topic(self, topic: str) -> None:
        if self._admin_config is not None:
            await _async_create(self._admin_config, [topic])
        self._known.add(topic)

    async def _send_retrying(self, topic: str, message: bytes, first: BaseException) -> Any:
        logger.warning("Kafka send to %r failed (%s); retrying", topic, first)

        async def attempt() -> Any:
            if topic not in self._known:
                await self._ensure_topic(topic)
            return await self._client.send(topic, message)

        try:
            return await self._retry.call_async(
                attempt, retry_on=self.connection_errors, broker=self._broker
            )
        except aiokafka.errors.MessageSizeTooLargeError as error:
            raise ValueError(f"message is larger than the Kafka limit: {error}") from error

    async def flush(self) -> None:
        """Wait until the broker acknowledged every message sent so far.

        Raises:
            BrokerConnectionError: If no message was acknowledged for the
                retry deadline, or messages were not delivered.
            ValueError: If a message was rejected as too large.
        """
        self.flush_calls += 1
        if self._closed:
            return
        await self._flush()

    async def _flush(self) -> None:
        settled, since = self._settled, time.monotonic()
        while self._pending:
            await asyncio.wait(list(self._pending), timeout=_WAIT_SLICE)
            now = time.monotonic()
            if self._settled != settled:
                settled, since = self._settled, now
            elif self._pending and now - since >= self._retry.deadline:
                raise BrokerConnectionError(
                    f"flush: no acknowledgement from the broker for {now - since:.1f} s "
                    f"(deadline {self._retry.deadline} s); {len(self._pending)} message(s) "
                    "are still buffered in the client",
                    broker=self._broker,
                )
        self._raise_failure()

    async def close(self) -> None:
        """Flush pending messages, then stop the client (idempotent).

        Raises:
            BrokerConnectionError: If pending messages could not be delivered.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self._flush()
        finally:
            await self._client.stop()


def _async_admin_keys() -> set[str]:
    return set(inspect.signature(aiokafka.admin.AIOKafkaAdminClient.__init__).parameters) - {
        "self",
        "loop",
    }


async def _async_create(config: Mapping[str, Any], topics: Iterable[str]) -> None:
    admin = aiokafka.admin.AIOKafkaAdminClient(**config)
    await admin.start()
    try:
        await admin.create_topics([aiokafka.admin.NewTopic(t, 1, 1) for t in topics])
    except aiokafka.errors.TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def _start(client: Any, servers: Any) -> None:
    try:
        with map_errors(_ERRORS, broker=_describe(servers)):
            await client.start()
    except BaseException:
        await client.stop()
        raise


# ------------------------------------------------------------------ subscribers


class KafkaSubscriber(ClosingContext):
    """Subscriber over a subscribed `kafka.KafkaConsumer` (or confluent `Consumer`).

    Messages are handed over one at a time from the client's fetched
    batches; only handed-over messages are ever committed (see the module
    docstring).

    Args:
        client: A consumer with ``enable_auto_commit=False``, subscribed to
            its topics (kafka-python), or not yet subscribed and given
            `topics`. It is closed by `close()`.
        topics: Topics to subscribe to; None keeps the client's subscription.
            Required for a confluent-kafka consumer.
        create_topics: Create the topics (one partition) if missing before
            subscribing (kafka-python clients only).
        retry: How long the broker may be away: `receive()` raises
            `BrokerConnectionError` once the client held no broker
            connection for ``retry.deadline`` seconds, and `ack()` once a
            commit did not go through within it. None means ``RetryPolicy()``.

    Raises:
        ValueError: If the consumer auto-commits, or has no topics.
        TypeError: If `client` is not a consumer or `retry` not a RetryPolicy.
    """

    connection_errors = _KAFKA_CONNECTION_ERRORS

    def __init__(
        self,
        client: Any,
        *,
        topics: Sequence[str] | None = None,
        create_topics: bool = True,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._client = client
        self._confluent = _is_confluent_consumer(client)
        if not self._confluent and not hasattr(client, "poll"):
            raise TypeError(
                "client must be a kafka.KafkaConsumer or confluent_kafka.Consumer, "
                f"not {type(client).__name__}",
            )
        config: dict[str, Any] = {} if self._confluent else dict(client.config)
        if not self._confluent:
            _reject_auto_commit(config.get("enable_auto_commit"))
        self._broker = _describe(config.get("bootstrap_servers"))
        self._group = True if self._confluent else config.get("group_id") is not None
        self._retry = _check_retry(retry)
        self._delivery = _Delivery()
        self._outage = _Outage(self._retry.deadline, self._broker)
        self._brokers_down = False  # confluent: the last metadata probe failed
        self._last_probe = 0.0
        # Offsets whose async commit failed (appended on the client's thread).
        self._failed_commits: collections.deque[dict[tuple[str, int], int]] = collections.deque()
        self._io = threading.Lock()
        self._closed = False
        self._client_closed = False
        if topics is None:
            if self._confluent:
                raise ValueError("topics is required with a confluent_kafka.Consumer")
            topics = sorted(client.subscription() or ())
        names = _check_topics(topics)
        with map_errors(_ERRORS, broker=self._broker):
            if create_topics and not self._confluent:
                admin = kafka.KafkaAdminClient(**_admin_kwargs(config))
                try:
                    _create_with(admin, names)
                finally:
                    admin.close()
            if self._confluent:
                client.subscribe(names, on_assign=self._on_assign, on_revoke=self._on_revoke)
            else:
                client.subscribe(names, listener=_Listener(self))

    @classmethod
    def from_bootstrap(
        cls,
        servers: str | Sequence[str],
        topics: Sequence[str],
        *,
        group_id: str,
        create_topics: bool = True,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber with a new `kafka.KafkaConsumer` in `group_id`.

        Args:
            servers: Bootstrap servers (``"host:port"`` or a list of them).
            topics: Topics to subscribe to.
            group_id: The consumer group; members share the messages.
            create_topics: See the class.
            retry: See the class; its ``initial``/``maximum`` also bound the
                client's reconnect backoff.
            **kwargs: Passed to `KafkaConsumer` (SASL/SSL settings,
                ``session_timeout_ms``, ``max_partition_fetch_bytes``...).
                ``auto_offset_reset`` defaults to ``"earliest"`` and
                ``bootstrap_timeout_ms`` to 5 s; ``enable_auto_commit``
                is forced off.

        Raises:
            ValueError: If ``enable_auto_commit=True`` is passed.
            BrokerConnectionError: If the broker cannot be reached.
        """
        _reject_auto_commit(kwargs.pop("enable_auto_commit", False))
        names = _check_topics(topics)
        if not isinstance(group_id, str) or not group_id:
            raise TypeError(f"group_id must be a non-empty str, not {group_id!r}")
        policy = _check_retry(retry)
        kwargs.setdefault("auto_offset_reset", "earliest")
        kwargs.setdefault("bootstrap_timeout_ms", _DEFAULT_TIMEOUT_MS)
        kwargs.setdefault("allow_auto_create_topics", not create_topics)
        _reconnect_defaults(kwargs, policy)
        with map_errors(_ERRORS, broker=_describe(servers)):
            client = kafka.KafkaConsumer(
                bootstrap_servers=servers,
                group_id=group_id,
                enable_auto_commit=False,
                **kwargs,
            )
        try:
            return cls(client, topics=names, create_topics=create_topics, retry=policy)
        except BaseException:
            client.close(autocommit=False, timeout_ms=0)
            raise

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive()
            except SubscriberClosedError:
                return

    # Called by the client inside poll(), on the receiving thread.
    def _on_assign(self, *_: Any) -> None:
        self._delivery.assigned = True

    def _on_revoke(self, *args: Any) -> None:
        partitions = args[-1]
        due = self._delivery.revoke((tp.topic, tp.partition) for tp in partitions)
        self._commit(due, sync=True)

    def _commit(self, offsets: Mapping[tuple[str, int], int], *, sync: bool) -> None:
        if not offsets or not self._group:
            return
        try:
            if self._confluent:
                import confluent_kafka

                parts = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                self._client.commit(offsets=parts, asynchronous=not sync)
            else:
                payload = _kafka_offsets(offsets)
                if sync:
                    self._client.commit(offsets=payload, timeout_ms=self._commit_timeout_ms())
                else:
                    self._client.commit_async(offsets=payload, callback=self._commit_done)
        except (kafka.errors.CommitFailedError, kafka.errors.IllegalStateError) as error:
            # The group moved on (we were evicted); the next owner re-reads
            # from the last commit, so these messages may be redelivered.
            logger.warning("Kafka commit failed, messages may be redelivered: %s", error)
            return
        self._delivery.mark_committed(offsets)

    def _take_failed_commits(self) -> None:
        while self._failed_commits:
            self._delivery.forget_commits(self._failed_commits.popleft())

    def _commit_timeout_ms(self) -> int:
        # A commit waits for the group coordinator; without a bound it waits
        # request_timeout_ms (305 s by default) for an absent broker.
        return max(1000, _ms(self._retry.deadline))

    def _commit_done(self, offsets: Mapping[Any, Any], response: Any) -> None:
        # Runs on the client's thread. A failed async commit was marked
        # committed when sent; hand it back so the next commit repeats it.
        if isinstance(response, Exception):
            logger.warning("Kafka async commit failed, will retry: %s", response)
            self._failed_commits.append(
                {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()},
            )

    def _connected(self) -> bool:
        """Whether the client holds a broker connection (best effort)."""
        if self._confluent:
            # librdkafka does not tell a consumer about its connections: while
            # no message arrives, ask for metadata at most every KEEPALIVE s.
            now = time.monotonic()
            if now - self._last_probe >= KEEPALIVE:
                self._last_probe = now
                try:
                    self._client.list_topics(timeout=_WAIT_SLICE)
                    self._brokers_down = False
                except Exception as error:  # confluent_kafka.KafkaException
                    logger.debug("Kafka metadata probe failed: %s", error)
                    self._brokers_down = True
            return not self._brokers_down
        manager = getattr(self._client, "_manager", None)
        connections = getattr(manager, "least_used_connections", None)
        if connections is None:  # another client version: no deadline
            return True
        try:
            return bool(connections())
        except RuntimeError:  # the client's thread changed its connections meanwhile
            return True

    def _poll(self, wait: float) -> None:
        if self._confluent:
            self._delivery.last_poll = time.monotonic()
            # consume() waits for all num_messages or the timeout, so take
            # one with poll() and then only what is ready already.
            first = self._client.poll(wait)
            if first is None:
                return
            for message in [first, *self._client.consume(num_messages=499, timeout=0)]:
                if message.error() is not None:
                    if message.error().fatal():
                        raise BrokerConnectionError(str(message.error()), broker=self._broker)
                    continue
                self._delivery.buffer.append(
                    _Record(
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        message.value(),
                    ),
                )
            return
        self._delivery.extend(self._client.poll(timeout_ms=int(wait * 1000)))

    def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message; acknowledges the one handed over before.

        Args:
            timeout: Seconds to wait at most; None waits until a message
                arrives or the subscriber is closed.

        Messages already fetched are handed over while the broker is away;
        the client reconnects by itself meanwhile.

        Raises:
            StreamTimeoutError: If no message arrived within `timeout`.
            SubscriberClosedError: If the subscriber is (or gets) closed.
            BrokerConnectionError: If the client held no broker connection
                for the retry deadline.
        """
        deadline = _deadline(timeout)
        while True:
            with self._io:
                if self._closed:
                    self._shutdown()
                    raise SubscriberClosedError("KafkaSubscriber is closed")
                self._delivery.ack_handed()
                if self._delivery.ready():
                    return self._delivery.take().value  # type: ignore[union-attr]
                self._take_failed_commits()
                with map_errors(_ERRORS, broker=self._broker):
                    self._commit(self._delivery.due(now=time.monotonic()), sync=False)
                    self._poll(0 if self._delivery.buffer else _slice(deadline))
                record = self._delivery.take()
                if record is not None:
                    self._outage.clear()
                    return record.value
                self._outage.check(self._connected())
            if _expired(deadline):
                raise StreamTimeoutError(f"No message within {timeout} s")

    def ack(self) -> None:
        """Acknowledge every message handed over so far (commits now).

        Raises:
            BrokerConnectionError: If the commit did not go through within
                the retry deadline (the offsets are committed later).
        """
        with self._io:
            if self._client_closed:
                return
            self._delivery.ack_handed()
            self._take_failed_commits()
            with map_errors(_ERRORS, broker=self._broker):
                # Everything acknowledged, also what an async commit may
                # still be carrying: after ack() it is committed for sure.
                self._commit(dict(self._delivery.acked), sync=True)

    def wait_assigned(self, timeout: float = 30.0) -> None:
        """Poll until this member holds its share of the group's partitions.

        It always polls at least once, so a pending rebalance is noticed.
        Messages fetched meanwhile are kept for `receive()`.

        Args:
            timeout: Seconds to wait at most.

        Raises:
            StreamTimeoutError: If the group did not settle in time.
            SubscriberClosedError: If the subscriber is closed.
        """
        deadline = _deadline(timeout)
        while True:
            with self._io:
                if self._closed:
                    raise SubscriberClosedError("KafkaSubscriber is closed")
                with map_errors(_ERRORS, broker=self._broker):
                    self._poll(0 if self._delivery.assigned else _slice(deadline))
                if self._delivery.assigned:
                    return
            if _expired(deadline):
                raise StreamTimeoutError(f"Not assigned partitions within {timeout} s")

    @property
    def assigned(self) -> bool:
        """Whether this member holds an assignment of the current generation."""
        return self._delivery.assigned

    def _shutdown(self) -> None:
        if self._client_closed:
            return
        self._client_closed = True
        # The client revokes its partitions while closing; the last handed
        # message must not count as acknowledged then.
        self._delivery.handed = None
        try:
            self._commit(dict(self._delivery.acked), sync=True)
        except Exception as error:  # closing must not fail on a lost broker
            logger.warning("Final Kafka commit failed: %s", error)
        if self._confluent:
            self._client.close()
        else:
            # Leaving the group waits for the coordinator: bound it too.
            self._client.close(autocommit=False, timeout_ms=self._commit_timeout_ms())

    def close(self) -> None:
        """Commit acknowledged offsets and close the client (idempotent).

        The last handed-over message is not acknowledged; it is redelivered
        to the group. Safe to call from another thread: a blocked receive
        ends within about 0.1 s.
        """
        self._closed = True
        # A receive in another thread leaves the client within one slice;
        # if it does not, it shuts the client down itself on its way out.
        if self._io.acquire(timeout=_CLOSE_WAIT):
            try:
                self._shutdown()
            finally:
                self._io.release()


def _kafka_offsets(offsets: Mapping[tuple[str, int], int]) -> dict[Any, Any]:
    return {
        kafka.TopicPartition(t, p): kafka.OffsetAndMetadata(o, "", -1)
        for (t, p), o in offsets.items()
    }


if hasattr(kafka, "AsyncConsumerRebalanceListener"):

    class _Listener(kafka.AsyncConsumerRebalanceListener):  # type: ignore[misc]
        # kafka-python >= 3 runs listeners on its IO thread, which must not
        # block: commit with the awaitable async variant. The receiving
        # thread is inside poll() meanwhile, so the buffer is not shared.
        def __init__(self, subscriber: KafkaSubscriber) -> None:
            self._subscriber = subscriber

        async def on_partitions_revoked(self, revoked: Any) -> None:
            sub = self._subscriber
            due = sub._delivery.revoke((tp.topic, tp.partition) for tp in revoked)
            if not due or not sub._group:
                return
            try:
                await sub._client.commit_async(offsets=_kafka_offsets(due))
            except kafka.errors.KafkaError as error:
                logger.warning("Kafka commit failed, messages may be redelivered: %s", error)
            else:
                sub._delivery.mark_committed(due)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            self._subscriber._on_assign(assigned)

else:  # pragma: no cover - kafka-python 2.x calls listeners inside poll()

    class _Listener(kafka.ConsumerRebalanceListener):  # type: ignore[misc,no-redef]
        def __init__(self, subscriber: KafkaSubscriber) -> None:
            self._subscriber = subscriber

        def on_partitions_revoked(self, revoked: Any) -> None:
            self._subscriber._on_revoke(revoked)

        def on_partitions_assigned(self, assigned: Any) -> None:
            self._subscriber._on_assign(assigned)


class AsyncKafkaSubscriber(AsyncClosingContext):
    """Async twin of `KafkaSubscriber` over an `aiokafka.AIOKafkaConsumer`.

    `receive()` is cancellation-safe: aiokafka's `getmany` takes records
    out of its buffer only after its wait, in one step, and they go to this
    subscriber's buffer before the next await.

    Args:
        client: A started consumer with ``enable_auto_commit=False``. It is
            stopped by `close()`.
        topics: Topics to subscribe to; None keeps the client's subscription.
        retry: `receive()` raises `BrokerConnectionError` once the client
            held no broker connection for ``retry.deadline`` seconds.
    """

    connection_errors = _AIOKAFKA_CONNECTION_ERRORS

    def __init__(
        self,
        client: Any,
        *,
        topics: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not hasattr(client, "getmany"):
            raise TypeError(f"client must be an AIOKafkaConsumer, not {type(client).__name__}")
        _reject_auto_commit(getattr(client, "_enable_auto_commit", False))
        self._client = client
        self._group = getattr(client, "_group_id", None) is not None
        self._broker = "kafka"
        self._retry = _check_retry(retry)
        self._outage = _Outage(self._retry.deadline, self._broker)
        self._delivery = _Delivery()
        self._closed = False
        self._client_closed = False
        names = _check_topics(sorted(client.subscription() or ()) if topics is None else topics)
        client.subscribe(names, listener=_AsyncListener(self))

    @classmethod
    async def from_bootstrap(
        cls,
        servers: str | Sequence[str],
        topics: Sequence[str],
        *,
        group_id: str,
        create_topics: bool = True,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber with a new, started `AIOKafkaConsumer` in `group_id`.

        Args:
            servers: Bootstrap servers.
            topics: Topics to subscribe to.
            group_id: The consumer group.
            create_topics: Create missing topics (one partition) first.
            retry: See the class; its ``initial`` also sets the client's
                ``retry_backoff_ms``.
            **kwargs: Passed to `AIOKafkaConsumer` (SASL/SSL settings...);
                ``auto_offset_reset`` defaults to ``"earliest"``.

        Raises:
            ValueError: If ``enable_auto_commit=True`` is passed.
            BrokerConnectionError: If the broker cannot be reached.
        """
        _reject_auto_commit(kwargs.pop("enable_auto_commit", False))
        names = _check_topics(topics)
        if not isinstance(group_id, str) or not group_id:
            raise TypeError(f"group_id must be a non-empty str, not {group_id!r}")
        policy = _check_retry(retry)
        kwargs.setdefault("auto_offset_reset", "earliest")
        kwargs.setdefault("request_timeout_ms", _DEFAULT_TIMEOUT_MS)
        kwargs.setdefault("retry_backoff_ms", max(1, _ms(policy.initial)))
        if create_topics:
            keys = _async_admin_keys()
            admin = {k: v for k, v in kwargs.items() if k in keys}
            with map_errors(_ERRORS, broker=_describe(servers)):
                await _async_create({**admin, "bootstrap_servers": servers}, names)
        client = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=servers,
            group_id=group_id,
            enable_auto_commit=False,
            **kwargs,
        )
        subscriber = cls(client, topics=names, retry=policy)
        subscriber._broker = subscriber._outage.broker = _describe(servers)
        await _start(client, servers)
        return subscriber

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield await self.receive()
            except SubscriberClosedError:
                return

    async def _on_revoke(self, partitions: Any) -> None:
        due = self._delivery.revoke((tp.topic, tp.partition) for tp in partitions)
        try:
            await self._commit(due, self._commit_timeout())
        except BrokerConnectionError as error:
            logger.warning("Kafka commit failed, messages may be redelivered: %s", error)

    async def _commit(self, offsets: Mapping[tuple[str, int], int], timeout: float) -> None:
        """Commit `offsets`; aiokafka waits for a coordinator without end, so bound it.

        Raises:
            BrokerConnectionError: If the commit did not complete in `timeout` s.
        """
        if not offsets or not self._group or self._client_closed:
            return
        payload = {aiokafka.TopicPartition(t, p): o for (t, p), o in offsets.items()}
        try:
            await asyncio.wait_for(self._client.commit(payload), timeout)
        except (aiokafka.errors.CommitFailedError, aiokafka.errors.IllegalStateError) as error:
            logger.warning("Kafka commit failed, messages may be redelivered: %s", error)
            return
        except TimeoutError as error:
            raise BrokerConnectionError(
                f"commit did not complete within {timeout} s", broker=self._broker
            ) from error
        self._delivery.mark_committed(offsets)

    def _commit_timeout(self) -> float:
        return max(1.0, self._retry.deadline)

    def receive_ready(self) -> bytes | None:
        """Return a buffered message, or None (never waits).

        Acknowledges the message handed over before, as `receive` does. None
        also when the client is due a poll or a commit: `receive` does those.
        """
        if self._closed:
            return None
        delivery = self._delivery
        delivery.ack_handed()
        return delivery.take().value if delivery.ready() else None  # type: ignore[union-attr]

    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `KafkaSubscriber.receive`)."""
        deadline = _deadline(timeout)
        self._delivery.ack_handed()
        while True:
            if self._closed:
                raise SubscriberClosedError("AsyncKafkaSubscriber is closed")
            if self._delivery.ready():
                return self._delivery.take().value  # type: ignore[union-attr]
            with map_errors(_ERRORS, broker=self._broker):
                try:
                    await self._commit(self._delivery.due(now=time.monotonic()), _WAIT_SLICE)
                except BrokerConnectionError as error:  # stays due; tried again later
                    logger.debug("Kafka commit postponed: %s", error)
                if self._closed:
                    continue
                wait = 0 if self._delivery.buffer else _slice(deadline)
                batches = await self._client.getmany(timeout_ms=int(wait * 1000))
            # No await between getmany returning and buffering: cancel-safe.
            self._delivery.extend(batches)
            if self._delivery.buffer:
                self._outage.clear()
                return self._delivery.take().value  # type: ignore[union-attr]
            self._outage.check(self._connected())
            if _expired(deadline):
                raise StreamTimeoutError(f"No message within {timeout} s")

    def _connected(self) -> bool:
        """Whether the client holds a broker connection (best effort)."""
        connections = getattr(getattr(self._client, "_client", None), "_conns", None)
        if connections is None:  # another client version: no deadline
            return True
        return any(conn.connected() for conn in list(connections.values()))

    async def ack(self) -> None:
        """Acknowledge every message handed over so far (commits now).

        Raises:
            BrokerConnectionError: If the commit did not go through within
                the retry deadline (the offsets are committed later).
        """
        self._delivery.ack_handed()
        with map_errors(_ERRORS, broker=self._broker):
            await self._commit(dict(self._delivery.acked), self._commit_timeout())

    async def wait_assigned(self, timeout: float = 30.0) -> None:
        """Wait until this member holds its share of the group's partitions.

        Raises:
            StreamTimeoutError: If the group did not settle in time.
            SubscriberClosedError: If the subscriber is closed.
        """
        deadline = _deadline(timeout)
        while not self._delivery.assigned:
            if self._closed:
                raise SubscriberClosedError("AsyncKafkaSubscriber is closed")
            if _expired(deadline):
                raise StreamTimeoutError(f"Not assigned partitions within {timeout} s")
            await asyncio.sleep(0.02)

    @property
    def assigned(self) -> bool:
        """Whether this member holds an assignment of the current generation."""
        return self._delivery.assigned

    async def close(self) -> None:
        """Commit acknowledged offsets and stop the client (idempotent).

        The last handed-over message is not acknowledged (it is redelivered).
        """
        self._closed = True
        if self._client_closed:
            return
        self._delivery.handed = None  # stop() revokes; do not ack the last one
        try:
            await self._commit(dict(self._delivery.acked), self._commit_timeout())
        except Exception as error:
            logger.warning("Final Kafka commit failed: %s", error)
        finally:
            self._client_closed = True
            await _stop_consumer(self._client)


async def _stop_consumer(client: Any) -> None:
    try:
        await client.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # aiokafka's fetcher awaits its own cancelled fetch tasks on close; one
        # sleeping in a retry backoff (broker away) re-raises CancelledError
        # and stop() skips closing the connections. Close them here.
        logger.warning("Kafka consumer stopped while its broker was away")
        network = getattr(client, "_client", None)
        if network is not None:
            await network.close()


class _AsyncListener(aiokafka.ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, subscriber: AsyncKafkaSubscriber) -> None:
        self._subscriber = subscriber

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._subscriber._on_revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._subscriber._delivery.assigned = True
