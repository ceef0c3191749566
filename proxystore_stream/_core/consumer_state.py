"""What a consumer decides, with no I/O: decode, filter, track end of stream.

The facades (`StreamConsumer`, `AsyncStreamConsumer`) drive it like this::

    while True:
        step = state.next_step()
        if step is NEED_MESSAGE:
            state.receive(subscriber.receive(timeout))   # the only blocking call
        elif step is STREAM_END:
            stop iteration
        elif isinstance(step, Discard):
            evict step.key from the store of step.store
        else:
            hand step (InlineObject or StoredObject) to the user

End of stream: a topic ends when every producer seen on it has sent its end
of stream (and at least `producers` of them, if given). The stream ends when
every topic of the consumer has ended: the topics given, or else every topic
seen so far.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from proxystore_stream._core.detached import detached_event
from proxystore_stream._core.detached import joined
from proxystore_stream._core.envelope import END
from proxystore_stream._core.envelope import INLINE
from proxystore_stream._core.envelope import WireBatch
from proxystore_stream._core.envelope import single_inline_event
from proxystore_stream._core.envelope import unpack_body
from proxystore_stream._core.envelope import wire_from_fields
from proxystore_stream.events import StoreConfig
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.protocols import DetachedMessage
from proxystore_stream.protocols import Filter


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_MESSAGE = _Sentinel("NEED_MESSAGE")
"""Receive the next message and pass it to `receive()`, then ask again."""

# Skipped messages are the consumer's news, so they are logged under its name.
logger = logging.getLogger("proxystore_stream.consumer")

STREAM_END = _Sentinel("STREAM_END")
"""Every topic of the consumer has ended."""


class _Delivered:
    """What the two kinds of hand-over share: where the event came from."""

    __slots__ = ()
    producer_id: str
    seq: int
    index: int

    @property
    def event_id(self) -> str:
        """Stable id of the event: ``producer_id:seq:index`` (the same on redelivery)."""
        return f"{self.producer_id}:{self.seq}:{self.index}"


@dataclass(slots=True)
class InlineObject(_Delivered):
    """Hand over an object that travelled in the message."""

    topic: str
    data: bytes
    serializer: str
    metadata: dict[str, Any]
    producer_id: str
    seq: int
    index: int


@dataclass(slots=True)
class StoredObject(_Delivered):
    """Hand over an object kept in a store (usually as a lazy proxy)."""

    topic: str
    key: str
    store: StoreConfig
    evict: bool
    metadata: dict[str, Any]
    producer_id: str
    seq: int
    index: int


@dataclass(slots=True)
class Discard:
    """A filtered-out stored object the producer wanted evicted: evict it."""

    key: str
    store: StoreConfig


Step = InlineObject | StoredObject | Discard | _Sentinel


@dataclass(slots=True)
class _TopicProgress:
    writers: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)


class ConsumerState:
    """Consumer logic with no I/O.

    Args:
        filter_: Drops events whose metadata it returns True for.
        topics: The topics whose end the stream waits for (default: every
            topic seen).
        producers: How many producers must close each topic before it ends
            (default: every producer seen on it).
        signing_key: If given, only messages signed with it are accepted.
        skip_malformed: `take` logs and drops a malformed or unauthenticated
            message (returning NEED_MESSAGE) instead of raising.
        source: Where messages come from (topic names), for error messages.
    """

    def __init__(
        self,
        *,
        filter_: Filter | None = None,
        topics: Iterable[str] | None = None,
        producers: int | None = None,
        signing_key: bytes | None = None,
        skip_malformed: bool = False,
        source: str | None = None,
    ) -> None:
        if filter_ is not None and not callable(filter_):
            raise TypeError("filter_ must be callable: metadata -> bool (True drops)")
        if producers is not None and (type(producers) is not int or producers < 1):
            raise ValueError(f"producers must be None or an int >= 1, got {producers!r}")
        self._filter = filter_
        self._expected_topics = None if topics is None else frozenset(topics)
        self._producers = producers
        self._signing_key = signing_key
        self._skip_malformed = skip_malformed
        self._source = source
        self._pending: deque[tuple[WireBatch, int]] = deque()
        self._progress: dict[str, _TopicProgress] = {}
        self._ended = False

    @property
    def ended(self) -> bool:
        """Whether the stream has ended."""
        return self._ended

    def receive(self, message: bytes, *, topic: str | None = None) -> None:
        """Take in one message from the subscriber.

        Args:
            message: The bytes received.
            topic: Where the message came from, if known (for errors).

        Raises:
            MalformedMessageError: If the bytes are not a valid envelope
                (the state is unchanged; the next message can follow).
        """
        fields = unpack_body(message, topic=topic, signing_key=self._signing_key)
        self._queue(wire_from_fields(fields, topic))

    def _queue(self, batch: WireBatch) -> None:
        """Note the batch's producer as a writer of its topic; queue its events."""
        progress = self._progress.get(batch.topic)
        if progress is None:
            progress = self._progress[batch.topic] = _TopicProgress()
        progress.writers.add(batch.producer_id)
        for index in range(len(batch.events)):
            self._pending.append((batch, index))

    def next_step(self) -> Step:
        """Return what the facade should do next."""
        while self._pending:
            batch, index = self._pending.popleft()
            event = batch.events[index]
            tag = event[0]
            if tag == END:
                self._progress[batch.topic].closed.add(batch.producer_id)
                if self._all_ended():
                    self._ended = True
                    self._pending.clear()
                    return STREAM_END
                continue
            metadata = event[-1]
            if self._filter is not None and self._filter(metadata):
                # event is [KEY, key, store_index, evict, metadata] here.
                if tag != INLINE and event[3]:
                    return Discard(event[1], batch.stores[event[2]])
                continue
            if tag == INLINE:
                return InlineObject(
                    batch.topic,
                    event[1],
                    batch.serializer,
                    metadata,
                    batch.producer_id,
                    batch.seq,
                    index,
                )
            return StoredObject(
                batch.topic,
                event[1],
                batch.stores[event[2]],
                event[3],
                metadata,
                batch.producer_id,
                batch.seq,
                index,
            )
        return STREAM_END if self._ended else NEED_MESSAGE

    def take(self, message: bytes | DetachedMessage) -> Step:
        """`receive(message)` then `next_step()`, faster for one-inline-object messages.

        A `DetachedMessage` (from a subscriber's `receive_detached`) goes to
        `take_detached`.

        Raises:
            MalformedMessageError: As `receive` (unless `skip_malformed`).
        """
        if isinstance(message, DetachedMessage):
            return self.take_detached(*message)
        try:
            if self._pending:
                self.receive(message, topic=self._source)
                return self.next_step()
            fields = unpack_body(message, topic=self._source, signing_key=self._signing_key)
            if self._filter is None:
                event = single_inline_event(fields)
                if event is not None:
                    topic, producer_id, seq, serializer, _, _ = fields
                    progress = self._progress.get(topic)
                    if progress is None:
                        progress = self._progress[topic] = _TopicProgress()
                    progress.writers.add(producer_id)
                    return InlineObject(topic, event[1], serializer, event[2], producer_id, seq, 0)
            self._queue(wire_from_fields(fields, self._source))
        except MalformedMessageError:
            if not self._skip_malformed:
                raise
            logger.warning("Skipped a malformed message", exc_info=True)
            return NEED_MESSAGE
        return self.next_step()

    def take_detached(self, message: bytes, frames: list[Any]) -> Step:
        """`take` for a `DetachedMessage`: one inline object whose frames came beside it.

        Raises:
            MalformedMessageError: If it is not a valid detached message, or
                this consumer checks signatures (unless `skip_malformed`).
        """
        try:
            fields, event = detached_event(
                message,
                frames,
                topic=self._source,
                signing_key=self._signing_key,
            )
        except MalformedMessageError:
            if not self._skip_malformed:
                raise
            logger.warning("Skipped a malformed message", exc_info=True)
            return NEED_MESSAGE
        topic, producer_id, seq, serializer, _, _ = fields
        progress = self._progress.get(topic)
        if progress is None:
            progress = self._progress[topic] = _TopicProgress()
        progress.writers.add(producer_id)
        metadata = event[2]
        if self._filter is not None and self._filter(metadata):
            return NEED_MESSAGE
        return InlineObject(topic, joined(frames), serializer, metadata, producer_id, seq, 0)

    def _topic_ended(self, progress: _TopicProgress) -> bool:
        if not progress.closed >= progress.writers:
            return False
        return self._producers is None or len(progress.closed) >= self._producers

    def _all_ended(self) -> bool:
        if self._expected_topics is not None:
            topics = self._expected_topics
            if not topics <= self._progress.keys():
                return False
        else:
            topics = frozenset(self._progress)
        return all(self._topic_ended(self._progress[topic]) for topic in topics)
