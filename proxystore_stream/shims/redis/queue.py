"""Redis list-queue shim: LPUSH to send; BLMOVE into a processing list to receive.

| property | behaviour |
| --- | --- |
| semantics | work queue: each message goes to one subscriber of its list |
| persistence | in Redis (per its RDB/AOF settings) until acknowledged |
| ordering | FIFO per topic (list) |
| no subscriber | messages wait in the list |
| acknowledgement | on the next receive, or `ack()`; unacknowledged ones come again |
| read-ahead | ``prefetch=n``: up to n messages moved per round trip (default 1) |
| duplicates | the handed, unacked message after a crash, close or lost connection |
| | with ``prefetch=n``: up to n handed since the last round trip (crash, lost connection) |
| | a send retried after its reply was lost |
| reconnection | `retry=` `RetryPolicy` (30 s), then `BrokerConnectionError` |
| max message size | 512 MiB (`proto-max-bulk-len`) |
| Redis version | 6.2 or later (LMOVE, BLMOVE) |

Each topic is a Redis list. A subscriber moves each message atomically
(BLMOVE) from the topic's list into its own processing list,
``<topic>:pss-processing:<consumer>``, hands it over, and removes it from
there (LTRIM) when the next message is asked for or `ack()` is called. The
removal travels in the same round trip as the next move. A message is
therefore always either in the topic's list or in one processing list:

- A subscriber killed after the move, or before its acknowledgement,
  leaves the message in its processing list. A subscriber started with the
  same `consumer` name delivers that list again first (the message handed
  last may then be processed twice). With the generated default name
  nobody does: give workers stable names.
- `close()` moves the processing list back to the head of its topic's list
  (the last handed message too, if not acknowledged), so another
  subscriber gets it next.
- After a lost connection the subscriber reconnects under its `retry`
  policy and re-reads its processing list before anything else: the
  message handed last is delivered again unless its acknowledgement had
  reached Redis.
- With ``prefetch=n`` (one topic), a round trip moves up to n waiting
  messages at once and `receive` hands them out one by one; their
  acknowledgements ride on the next round trip, so a crash or a lost
  connection redelivers those handed since then (at most n). `close()`
  still acknowledges all but the last one handed.

Only one live subscriber may use a given `consumer` name. A subscriber of
several topics moves from the first non-empty one in the order given
(one Lua LMOVE round over all lists), so a busy first topic can starve
later ones; while every list is empty it blocks on the first topic in
0.05 s slices, so a message on a later topic waits up to that long.

Example:
    ```python
    publisher = RedisQueuePublisher("127.0.0.1", 6379)
    subscriber = RedisQueueSubscriber("127.0.0.1", 6379, "jobs", consumer="worker-1")
    publisher.send("jobs", b"...")
    job = subscriber.receive(timeout=5)
    ```
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from functools import partial
from typing import Any
from typing import Self
from typing import TypeVar

from proxystore_stream._context import AsyncOpeningContext
from proxystore_stream._context import ClosingContext
from proxystore_stream.exceptions import require

try:
    import redis
    import redis.asyncio
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    require(__name__, "redis", "redis", e)

from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims._errors import map_errors
from proxystore_stream.shims.redis._common import CONNECTION_ERRORS
from proxystore_stream.shims.redis._common import ERRORS
from proxystore_stream.shims.redis._common import SLICE_SECONDS
from proxystore_stream.shims.redis._common import broker_name
from proxystore_stream.shims.redis._common import check_name
from proxystore_stream.shims.redis._common import check_replies
from proxystore_stream.shims.redis._common import check_retry
from proxystore_stream.shims.redis._common import client_kwargs
from proxystore_stream.shims.redis._common import default_consumer
from proxystore_stream.shims.redis._common import own_connection
from proxystore_stream.shims.redis._common import roundtrip
from proxystore_stream.shims.redis._common import stop_if_fatal
from proxystore_stream.shims.redis._common import stop_if_fatal_async
from proxystore_stream.shims.redis._common import subscriber_client
from proxystore_stream.shims.redis._common import topic_list
from proxystore_stream.shims.redis._common import url_arguments
from proxystore_stream.shims.redis._common import wrong_type
from proxystore_stream.shims.redis._publish import AsyncCommandPublisher
from proxystore_stream.shims.redis._publish import CommandPublisher
from proxystore_stream.shims.redis._publish import replaying
from proxystore_stream.shims.redis._publish import replaying_async
from proxystore_stream.shims.redis._rounds import AsyncRounds

__all__ = [
    "AsyncRedisQueuePublisher",
    "AsyncRedisQueueSubscriber",
    "RedisQueuePublisher",
    "RedisQueueSubscriber",
    "processing_list",
]

logger = logging.getLogger(__name__)

# RESP2: as fast as RESP3 or a little faster for LPUSH/BRPOP here (medians
# 13.1k vs 10.9k msg/s at 100 B, 585 vs 562 MB/s at 1 MiB; docs/shims/redis.md).
PROTOCOL = 2
# BLMOVE takes a timeout in seconds; 0 would block forever, so never send it.
_MIN_BLOCK = 0.01
# While every list of a multi-topic subscriber is empty, it blocks on the
# first one this long, then polls all of them again.
_MULTI_BLOCK = 0.05

# KEYS: the topics' lists, then their processing lists. Moves the oldest
# message of the first non-empty list; returns {topic index, message}.
_POLL = """
local n = #KEYS / 2
for i = 1, n do
  local message = redis.call('LMOVE', KEYS[i], KEYS[n + i], 'RIGHT', 'LEFT')
  if message then return {i - 1, message} end
end
return false
"""

# Read-ahead stops at messages this large: their transfer dwarfs a round
# trip, and moved ones would only sit in memory.
_LARGE = 64 * 1024

# KEYS as above. Moves every processing list back to the head (right end)
# of its topic's list, oldest message rightmost, so it is popped first.
_GIVE_BACK = """
local n = #KEYS / 2
local moved = 0
for i = 1, n do
  while redis.call('LMOVE', KEYS[n + i], KEYS[i], 'LEFT', 'RIGHT') do
    moved = moved + 1
  end
end
return moved
"""

# At `maxmemory`, Redis refuses LMOVE/BLMOVE and plain scripts (they may
# grow memory), so consumers could not drain a full Redis. A script flagged
# allow-oom (Redis 7+) may still move: used only after an OOM reply, as
# older servers do not parse the flag line.
_ALLOW_OOM = "#!lua flags=allow-oom\n"
# While Redis is full and the lists are empty, poll this often.
_FULL_PAUSE = 0.05

T = TypeVar("T")
# What a failed give-back at close() may raise; the messages stay put.
_GIVE_BACK_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, redis.ResponseError)
Command = tuple[Any, ...]
Taken = tuple[int, bytes]
"""(topic index, message) of a message moved into a processing list."""
Round = tuple[list[Command], Callable[[list[Any]], None]]
"""One round trip: commands sent together, and what takes their replies."""


def processing_list(topic: str, consumer: str) -> str:
    """Return the name of `consumer`'s processing list for `topic`."""
    return f"{topic}:pss-processing:{consumer}"


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout}")
    return timeout


def _check_prefetch(prefetch: int) -> int:
    if not isinstance(prefetch, int) or isinstance(prefetch, bool):
        raise TypeError(f"prefetch must be an int, not {type(prefetch).__name__}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, not {prefetch}")
    return prefetch


def _block(wait: float) -> float:
    return max(_MIN_BLOCK, round(wait, 3))


@dataclass
class _Lists:
    """What a list subscriber knows and decides; the twins only do the I/O.

    The processing list of each topic holds, newest first (left to right):
    messages moved but not handed yet, then `handed[i]` messages handed but
    not acknowledged at its right end. Acknowledging trims those off the
    right end. After any failed round trip the local view is dropped
    (`lost`) and rebuilt from Redis (`take_sync`): a trim is never repeated
    blindly, because a repeated LTRIM would remove an unacknowledged message.
    """

    topics: list[str]
    consumer: str
    prefetch: int = 1
    keys: list[str] = field(init=False)
    # Messages read back from the processing lists, oldest first.
    backlog: deque[Taken] = field(default_factory=deque)
    handed: list[int] = field(init=False)
    synced: bool = False
    # Redis answered OOM to a move: poll with the allow-oom script.
    full: bool = False
    # Read-ahead: messages the topic's list held after the last move, and
    # whether the last ones moved were large.
    waiting: int = 0
    large: bool = False
    # Topic index of the message handed last (the one close() gives back).
    last: int | None = None

    def __post_init__(self) -> None:
        self.keys = [processing_list(t, self.consumer) for t in self.topics]
        self.handed = [0] * len(self.topics)

    def lost(self) -> None:
        """Forget the local view; the next round re-reads the processing lists."""
        self.synced = False
        self.backlog.clear()
        self.handed = [0] * len(self.topics)
        self.waiting = 0
        self.last = None

    def sync_commands(self) -> list[Command]:
        """Commands reading every processing list whole."""
        return [("LRANGE", key, 0, -1) for key in self.keys]

    def take_sync(self, replies: list[Any]) -> None:
        """Take the LRANGE replies: everything in them is delivered (again).

        Raises:
            redis.ResponseError: If a reply is an error.
        """
        check_replies(replies)
        self.lost()
        for index, messages in enumerate(replies):
            self.backlog.extend((index, m) for m in reversed(messages))
        self.synced = True

    def trims(self) -> tuple[list[Command], list[int]]:
        """Commands acknowledging the handed messages, and the counts they cover."""
        counts = list(self.handed)
        commands: list[Command] = [
            ("LTRIM", key, 0, -(count + 1))
            for key, count in zip(self.keys, counts, strict=True)
            if count
        ]
        return commands, counts

    def trimmed(self, counts: list[int]) -> None:
        """Record that the trims made from `counts` reached Redis."""
        self.handed = [now - done for now, done in zip(self.handed, counts, strict=True)]

    def take_trims(self, counts: list[int], replies: list[Any]) -> None:
        """Take the replies of the trims made from `counts`.

        Raises:
            redis.ResponseError: If a reply is an error.
        """
        check_replies(replies)
        self.trimmed(counts)

    def take_move_round(self, counts: list[int], replies: list[Any]) -> None:
        """Take the replies of trims (from `counts`) followed by one move.

        A message moved goes to the end of `backlog`.

        Raises:
            redis.ResponseError: If a reply is an error (an OOM move is not).
        """
        self.take_trims(counts, replies[:-1])
        self.take_follow(replies[-1:])

    def take_follow(self, replies: list[Any]) -> None:
        """Take the reply of one move; a message moved goes to the end of `backlog`.

        Raises:
            redis.ResponseError: If the reply is an error other than OOM.
        """
        taken = self.take_move(replies[0])
        if taken is not None:
            self.backlog.append(taken)

    def take_read_ahead_round(self, counts: list[int], replies: list[Any]) -> None:
        """Take the replies of trims (from `counts`) followed by `read_ahead_commands`.

        Every message moved goes to `backlog`, oldest first.

        Raises:
            redis.ResponseError: If a reply is an error (an OOM move is not).
        """
        trims = sum(1 for count in counts if count)
        self.take_trims(counts, replies[:trims])
        taken = self.take_read_ahead(replies[trims:])
        if taken is not None:
            self.backlog.appendleft(taken)

    def round_trips(self, wait: float) -> Iterator[Round]:
        """The round trips of one receive: commands, and what takes their replies.

        The caller sends each round's commands and applies their replies
        before it asks for the next round: each step is planned from the
        state the previous one left. Afterwards a message taken is at the
        front of `backlog`; none means "pause, then try again".
        """
        if not self.synced:
            yield self.sync_commands(), self.take_sync
        trims, counts = self.trims()
        if self.backlog:
            if trims and self.acks_each():
                yield trims, partial(self.take_trims, counts)
            return
        if self.reads_ahead():
            moves = self.read_ahead_commands(wait)
            yield [*trims, *moves], partial(self.take_read_ahead_round, counts)
        else:
            yield [*trims, self.move_command(wait)], partial(self.take_move_round, counts)
        if not self.backlog and (follow := self.follow_command(wait)) is not None:
            yield [follow], self.take_follow

    def _poll_command(self) -> Command:
        script = _ALLOW_OOM + _POLL if self.full else _POLL
        return ("EVAL", script, 2 * len(self.topics), *self.topics, *self.keys)

    def move_command(self, wait: float) -> Command:
        """The command moving the next message (blocking for one topic)."""
        if len(self.topics) == 1 and not self.full:
            return ("BLMOVE", self.topics[0], self.keys[0], "RIGHT", "LEFT", _block(wait))
        return self._poll_command()

    def follow_command(self, wait: float) -> Command | None:
        """What to send after a move that took nothing, if anything.

        Redis just refused the move for lack of memory: the allow-oom poll.
        An empty multi-topic poll: block on the first topic for a while.
        """
        if self.full:
            return self._poll_command()
        if len(self.topics) == 1:
            return None
        block = _block(min(wait, _MULTI_BLOCK))
        return ("BLMOVE", self.topics[0], self.keys[0], "RIGHT", "LEFT", block)

    def take_move(self, reply: Any) -> Taken | None:
        """Take the reply of a move (BLMOVE on the first topic, or a poll script).

        Raises:
            redis.ResponseError: If the reply is an error other than OOM.
        """
        if isinstance(reply, redis.exceptions.OutOfMemoryError):
            self.full = True
            return None
        if isinstance(reply, redis.ResponseError):
            raise reply
        if reply is None:
            return None
        if isinstance(reply, list):
            return (int(reply[0]), reply[1])
        return (0, reply)

    def pause(self) -> float:
        """Seconds to wait after a round that took nothing (0: none).

        While Redis is full nothing blocks, so the subscriber polls; after
        the pause it tries a blocking move again.
        """
        if not self.full:
            return 0.0
        self.full = False
        return _FULL_PAUSE

    def give_back_command(self, *, full: bool = False) -> Command:
        """The command moving every processing list back to its topic's head."""
        script = _ALLOW_OOM + _GIVE_BACK if full else _GIVE_BACK
        return ("EVAL", script, 2 * len(self.topics), *self.topics, *self.keys)

    def give_back_commands(self, reply: Any) -> list[Command]:
        """After the give-back reply: nothing, or the allow-oom retry after OOM."""
        if isinstance(reply, redis.exceptions.OutOfMemoryError):
            return [self.give_back_command(full=True)]
        if isinstance(reply, redis.ResponseError):
            raise reply
        return []

    def hand(self, taken: Taken) -> bytes:
        """Record a message as handed to the caller and return it."""
        self.handed[taken[0]] += 1
        self.last = taken[0]
        return taken[1]

    def reads_ahead(self) -> bool:
        """Whether a round moves several messages (one topic, prefetch > 1, not full)."""
        return self.prefetch > 1 and len(self.topics) == 1 and not self.full

    def acks_each(self) -> bool:
        """Whether each receive acknowledges the previous message in Redis at once.

        Without read-ahead every receive is a round trip anyway; with it,
        the acknowledgements wait for the next round trip.
        """
        return not self.reads_ahead()

    def read_ahead_commands(self, wait: float) -> list[Command]:
        """Commands moving up to `prefetch` messages, then reading the list's length.

        Moves at once (LMOVE) as many as are known to wait, unless the last
        messages were large; else blocks (BLMOVE) for one.
        """
        topic, key = self.topics[0], self.keys[0]
        length: Command = ("LLEN", topic)
        if self.waiting and not self.large:
            count = min(self.waiting, self.prefetch)
            return [*[("LMOVE", topic, key, "RIGHT", "LEFT")] * count, length]
        return [("BLMOVE", topic, key, "RIGHT", "LEFT", _block(wait)), length]

    def take_read_ahead(self, replies: list[Any]) -> Taken | None:
        """Take the replies of `read_ahead_commands`: the first message, the rest queued.

        Raises:
            redis.ResponseError: If a reply is an error other than OOM.
        """
        moved = [taken for reply in replies[:-1] if (taken := self.take_move(reply))]
        if isinstance(replies[-1], redis.ResponseError):
            raise replies[-1]
        self.waiting = int(replies[-1])
        self.large = any(len(message) >= _LARGE for _, message in moved)
        self.backlog.extend(moved[1:])
        return moved[0] if moved else None

    def closing_trims(self) -> tuple[list[Command], list[int]]:
        """Trims acknowledging every handed message except the last one, for close()."""
        counts = list(self.handed)
        if self.last is not None and counts[self.last]:
            counts[self.last] -= 1
        commands: list[Command] = [
            ("LTRIM", key, 0, -(count + 1))
            for key, count in zip(self.keys, counts, strict=True)
            if count
        ]
        return commands, counts


class RedisQueuePublisher(CommandPublisher):
    """Publisher pushing each message onto the list `topic` (LPUSH).

    Args:
        hostname: Redis host.
        port: Redis port.
        retry: Reconnect policy (None: `RetryPolicy()`, a 30 s deadline).
        **kwargs: Passed to `redis.Redis` (``password``, ``db``, ``ssl``...).

    Raises:
        TypeError: If `hostname`, `port` or `retry` has the wrong type.
    """

    protocol = PROTOCOL

    def _arguments(self, topic: str, message: Any) -> tuple[Any, ...]:
        return ("LPUSH", topic, message)


class RedisQueueSubscriber(ClosingContext):
    """Subscriber taking messages from one or more lists, at least once.

    Args:
        hostname: Redis host.
        port: Redis port.
        topic: List name, or a sequence of them (taken in that priority).
        consumer: This subscriber's name; its processing lists are named
            after it. Reuse a name to get a dead subscriber's unacknowledged
            messages; None makes a unique one (``host-pid-random``).
        timeout: Seconds iteration waits for a message at most (None:
            forever); expiry raises `StreamTimeoutError`.
        prefetch: Messages moved per round trip at most (one topic only).
            1: each receive is one round trip that also acknowledges the
            previous message. More: waiting messages are moved into the
            processing list together and handed out one by one, and the
            acknowledgements travel with the next round trip, so a crash
            or lost connection redelivers up to `prefetch` handed messages
            (close() still gives back only the last one).
        retry: Reconnect policy (None: `RetryPolicy()`, a 30 s deadline).
        **kwargs: Passed to `redis.Redis` (see `RedisQueuePublisher`).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If `topic` or `consumer` is empty or `timeout` negative.
        BrokerConnectionError: If Redis stays unreachable past the deadline.
    """

    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        topic: str | Sequence[str],
        *,
        consumer: str | None = None,
        timeout: float | None = None,
        prefetch: int = 1,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        name = check_name(default_consumer() if consumer is None else consumer, "consumer")
        self._lists = _Lists(topic_list(topic), name, _check_prefetch(prefetch))
        self._timeout = _check_timeout(timeout)
        self._retry = check_retry(retry)
        options = client_kwargs(hostname, port, kwargs, protocol=PROTOCOL)
        self._broker = broker_name(hostname, port, options)
        self._closed = False
        self._released = False
        self._lock = threading.RLock()
        self._client = subscriber_client(options)
        self._connection = own_connection(self._client)
        try:
            self._call(partial(roundtrip, self._connection, [("PING",)]))
        except BaseException:
            self._release()
            raise

    @classmethod
    def from_url(
        cls,
        url: str,
        topic: str | Sequence[str],
        *,
        consumer: str | None = None,
        timeout: float | None = None,
        prefetch: int = 1,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber from a Redis URL (see `RedisQueuePublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(
            hostname,
            port,
            topic,
            consumer=consumer,
            timeout=timeout,
            prefetch=prefetch,
            retry=retry,
            **{**options, **kwargs},
        )

    @property
    def consumer(self) -> str:
        """This subscriber's name (its processing lists are named after it)."""
        return self._lists.consumer

    def _call(self, operation: Callable[[], T]) -> T:
        # The first attempt runs bare; a failure enters the policy as its
        # first attempt (see _publish.replaying).
        try:
            return operation()
        except Exception as exc:
            failure = exc
        with map_errors(ERRORS, broker=self._broker), wrong_type(self._lists.topics, "list"):
            return self._retry.call(
                replaying(failure, operation),
                retry_on=CONNECTION_ERRORS,
                broker=self._broker,
                on_retry=partial(stop_if_fatal, broker=self._broker),
            )

    def open(self) -> None:
        """Do nothing: the constructor already connected (parity with the async twin).

        Raises:
            SubscriberClosedError: If the subscriber is closed.
        """
        if self._closed:
            raise SubscriberClosedError("RedisQueueSubscriber is closed")

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive(self._timeout)
            except SubscriberClosedError:
                return

    def receive(self, timeout: float | None = None) -> bytes:
        """Acknowledge the previous message and return the next one.

        Waits `timeout` seconds at most for a message; while Redis is away
        it keeps reconnecting until the retry policy's deadline instead.

        Raises:
            StreamTimeoutError: If no message arrived in time.
            SubscriberClosedError: If the subscriber is (or gets) closed.
            ValueError: If a topic names a Redis key that is not a list.
            BrokerConnectionError: If Redis stays unreachable past the deadline.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                wait = SLICE_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                taken = self._call(partial(self._round, wait))
                if taken is not None:
                    # Handed even if close() came meanwhile: close() gives
                    # back what was not acknowledged.
                    return self._lists.hand(taken)
                if deadline is not None and time.monotonic() >= deadline:
                    raise StreamTimeoutError(f"No message within {timeout} s")

    def _round(self, wait: float) -> Taken | None:
        if self._closed:
            raise SubscriberClosedError("RedisQueueSubscriber is closed")
        lists = self._lists
        try:
            for commands, take in lists.round_trips(wait):
                take(roundtrip(self._connection, commands, check=False))
        except BaseException:
            lists.lost()
            raise
        if lists.backlog:
            return lists.backlog.popleft()
        if pause := lists.pause():
            time.sleep(min(pause, max(wait, 0.0)))
        return None

    def ack(self) -> None:
        """Acknowledge every message handed over so far.

        Does nothing once the subscriber is closed.

        Raises:
            BrokerConnectionError: If Redis stays unreachable past the deadline.
        """
        with self._lock:
            if not self._released:
                self._call(self._trim)

    def _trim(self) -> None:
        lists = self._lists
        trims, counts = lists.trims()
        if not trims:
            return
        try:
            roundtrip(self._connection, trims)
        except BaseException:
            lists.lost()
            raise
        lists.trimmed(counts)

    def close(self) -> None:
        """Close the subscriber (idempotent) and give back what it holds.

        Messages in its processing lists (the last one handed over, if not
        acknowledged) go back to the head of their lists. If Redis cannot be
        reached they stay in the processing lists, for a subscriber with the
        same `consumer` name. Safe to call from another thread: a blocked
        `receive` ends within about 0.1 s (or one retry delay while
        reconnecting) and the connection is released once it has.
        """
        self._closed = True
        with self._lock:
            if self._released:
                return
            try:
                self._give_back()
            except _GIVE_BACK_ERRORS as exc:
                _kept(self._lists, exc)
            finally:
                self._release()

    def _give_back(self) -> None:
        trims, _ = self._lists.closing_trims()
        if trims:
            roundtrip(self._connection, trims)
        commands = [self._lists.give_back_command()]
        while commands:
            reply = roundtrip(self._connection, commands, check=False)[0]
            commands = self._lists.give_back_commands(reply)

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._connection.disconnect()
            self._client.close()


def _kept(lists: _Lists, exc: BaseException) -> None:
    logger.warning(
        "could not give back unacknowledged messages (%s: %s); they stay in %s "
        "for a subscriber with consumer=%r",
        type(exc).__name__,
        exc,
        ", ".join(lists.keys),
        lists.consumer,
    )


class AsyncRedisQueuePublisher(AsyncCommandPublisher):
    """Async twin of `RedisQueuePublisher` (redis.asyncio); same arguments."""

    protocol = PROTOCOL

    def _arguments(self, topic: str, message: Any) -> tuple[Any, ...]:
        return ("LPUSH", topic, message)


class AsyncRedisQueueSubscriber(AsyncOpeningContext):
    """Async twin of `RedisQueueSubscriber` (redis.asyncio); same arguments.

    A `receive` that times out or is cancelled while a BLMOVE (0.1 s at
    most) is under way leaves that round trip in flight (`AsyncRounds`):
    the next call applies its reply first, so a message it moved is handed
    then, and `close()` gives it back otherwise, like any other.
    """

    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        topic: str | Sequence[str],
        *,
        consumer: str | None = None,
        timeout: float | None = None,
        prefetch: int = 1,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        name = check_name(default_consumer() if consumer is None else consumer, "consumer")
        self._lists = _Lists(topic_list(topic), name, _check_prefetch(prefetch))
        self._timeout = _check_timeout(timeout)
        self._retry = check_retry(retry)
        options = client_kwargs(hostname, port, kwargs, protocol=PROTOCOL, asyncio=True)
        self._broker = broker_name(hostname, port, options)
        self._closed = False
        self._client = redis.asyncio.Redis(**options)
        self._connection = own_connection(self._client, socket_timeout=None)
        self._rounds = AsyncRounds(self._connection, options.get("socket_timeout"))
        # One call at a time talks to Redis: replies come in the order asked.
        self._turn = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        topic: str | Sequence[str],
        *,
        consumer: str | None = None,
        timeout: float | None = None,
        prefetch: int = 1,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber from a Redis URL (see `RedisQueuePublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(
            hostname,
            port,
            topic,
            consumer=consumer,
            timeout=timeout,
            prefetch=prefetch,
            retry=retry,
            **{**options, **kwargs},
        )

    @property
    def consumer(self) -> str:
        """This subscriber's name (its processing lists are named after it)."""
        return self._lists.consumer

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except StreamTimeoutError:
            raise
        except Exception as exc:
            failure = exc
        with map_errors(ERRORS, broker=self._broker), wrong_type(self._lists.topics, "list"):
            return await self._retry.call_async(
                replaying_async(failure, operation),
                retry_on=CONNECTION_ERRORS,
                broker=self._broker,
                on_retry=partial(stop_if_fatal_async, broker=self._broker),
            )

    async def open(self) -> None:
        """Check that Redis answers (lists need no subscription).

        Raises:
            BrokerConnectionError: If Redis stays unreachable past the deadline.
            SubscriberClosedError: If the subscriber is closed.
        """
        if self._closed:
            raise SubscriberClosedError("AsyncRedisQueueSubscriber is closed")
        async with self._turn:
            await self._call(partial(self._rounds.run, [("PING",)], check_replies))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield await self.receive(self._timeout)
            except SubscriberClosedError:
                return

    async def receive(self, timeout: float | None = None) -> bytes:
        """Acknowledge the previous message and return the next one.

        See `RedisQueueSubscriber.receive`.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._turn:
            while True:
                taken = await self._call(partial(self._round, SLICE_SECONDS, deadline))
                if taken is not None:
                    if self._closed:  # close() gives it back
                        self._lists.backlog.appendleft(taken)
                        raise SubscriberClosedError("AsyncRedisQueueSubscriber is closed")
                    return self._lists.hand(taken)
                if deadline is not None and loop.time() >= deadline:
                    raise StreamTimeoutError(f"No message within {timeout} s")

    async def _round(self, wait: float, deadline: float | None) -> Taken | None:
        """`RedisQueueSubscriber._round` on `AsyncRounds` (a round cut off stays in flight)."""
        if self._closed:
            raise SubscriberClosedError("AsyncRedisQueueSubscriber is closed")
        lists = self._lists
        try:
            await self._rounds.finish(deadline)
            for commands, take in lists.round_trips(wait):
                await self._rounds.run(commands, take, block=wait, deadline=deadline)
        except StreamTimeoutError:
            raise  # the round stays in flight; nothing is lost
        except Exception:
            lists.lost()
            raise
        if lists.backlog:
            return lists.backlog.popleft()
        if pause := lists.pause():
            await asyncio.sleep(min(pause, wait))
        return None

    async def ack(self) -> None:
        """Acknowledge every message handed over so far (see `RedisQueueSubscriber.ack`)."""
        if self._closed:
            return
        async with self._turn:
            await self._call(self._trim)

    async def _trim(self) -> None:
        lists = self._lists
        try:
            await self._rounds.finish()
            trims, counts = lists.trims()
            if trims:
                await self._rounds.run(trims, partial(lists.take_trims, counts))
        except Exception:
            lists.lost()
            raise

    async def close(self) -> None:
        """Close the subscriber (idempotent) and give back what it holds.

        See `RedisQueueSubscriber.close`; a waiting `receive` ends (within
        the 0.1 s its BLMOVE blocks) with `SubscriberClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        try:
            async with self._turn:
                # A message a round in flight moved is in the processing list.
                await self._rounds.finish()
                trims, _ = self._lists.closing_trims()
                if trims:
                    await self._rounds.run(trims, check_replies)
                commands = [self._lists.give_back_command()]
                while commands:
                    replies: list[Any] = []
                    await self._rounds.run(commands, replies.extend)
                    commands = self._lists.give_back_commands(replies[0])
        except _GIVE_BACK_ERRORS as exc:
            _kept(self._lists, exc)
        finally:
            await self._connection.disconnect()
            await self._client.aclose()
