"""What a producer decides, with no I/O: filter, buffer, aggregate, encode.

The facades (`StreamProducer`, `AsyncStreamProducer`) drive it like this::

    ready = state.submit(topic, obj, evict=..., metadata=...)   # or flush/close_topic
    if ready is not None:
        prepared = state.prepare(ready)              # serialize, inline or store?
        keys = store.put_batch(prepared.to_store)    # the facade's only store I/O
        publisher.send(ready.topic, prepared.message(keys))
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Generic
from typing import Protocol
from typing import TypeVar
from typing import cast

from proxystore_stream._core.detached import detach
from proxystore_stream._core.envelope import EMPTY_METADATA
from proxystore_stream._core.envelope import END
from proxystore_stream._core.envelope import INLINE
from proxystore_stream._core.envelope import KEY
from proxystore_stream._core.envelope import encode_bytes_alone
from proxystore_stream._core.envelope import encode_single_inline
from proxystore_stream._core.envelope import encode_wire
from proxystore_stream._core.envelope import frames_size
from proxystore_stream._core.envelope import pack_metadata
from proxystore_stream._core.envelope import single_inline_head
from proxystore_stream._core.envelope import single_inline_tail
from proxystore_stream._core.envelope import store_fields
from proxystore_stream._types import Buffer
from proxystore_stream.events import StoreConfig
from proxystore_stream.exceptions import TopicClosedError
from proxystore_stream.protocols import DetachedMessage
from proxystore_stream.protocols import Filter
from proxystore_stream.serialize import RAW
from proxystore_stream.serialize import Serializer
from proxystore_stream.serialize import serializer_for

T = TypeVar("T")

_NEVER = 1 << 62
"""The detach threshold of a producer that never detaches (larger than any object)."""

DEFAULT_MAX_BATCH_BYTES = 1 << 18
"""Default `max_batch_bytes`. Past a few hundred KiB a batch saves no
per-message cost worth its copies: buffers that large are fresh mmap'd
memory, paid for in page faults (queue shim, 10 KiB objects, batch 64:
0.77x the bare queue's time at 256 KiB, 1.27x at 1 MiB; docs/benchmarks.md)."""


class StoreView(Protocol):
    """The pure parts of a Store the core needs (no I/O)."""

    def serializer_for(self, obj: Any) -> Serializer:
        """The serializer the store writes `obj` with."""
        ...

    def config(self, serializer: str | None = None) -> StoreConfig:
        """The store's config for objects written with `serializer`."""
        ...


@dataclass(slots=True)
class PendingObject(Generic[T]):
    """An accepted object waiting in a topic buffer.

    Objects are serialized when accepted (unless an aggregator will combine
    them first): a later change to the object does not change what is sent,
    an unserializable object fails the `send()` that passed it, and the
    buffer knows its size in bytes.
    """

    obj: T
    evict: bool
    metadata: dict[str, Any]
    serializer: Serializer | None = None
    frames: list[Buffer] | None = None


@dataclass(slots=True)
class ReadyBatch(Generic[T]):
    """Objects of one topic ready to go out, and whether the topic ends."""

    topic: str
    objects: list[PendingObject[T]]
    end_of_stream: bool = False


@dataclass(slots=True)
class _Topic(Generic[T]):
    buffer: list[PendingObject[T]] = field(default_factory=list)
    closed: bool = False
    end_sent: bool = False
    seq: int = 0
    buffered_bytes: int = 0
    head: bytes = b""
    """`single_inline_head` of a direct topic (see `ProducerState.direct_topics`)."""


@dataclass(slots=True)
class PreparedBatch:
    """A serialized batch: frames for the store, then the message bytes."""

    topic: str
    to_store: list[list[Buffer]]
    """Serialized objects for `store.put_batch`, in order (may be empty)."""
    _events: list[list[Any]]
    _key_slots: list[int]
    _producer_id: str
    _seq: int
    _serializer: str
    _stores: list[list[Any]]
    _signing_key: bytes | None
    _detach_at: int = _NEVER

    def outgoing(self, keys: Sequence[str] = ()) -> bytes | DetachedMessage:
        """`message(keys)`, or its detached form for one large inline object.

        Detached as `ProducerState.detach_from` allows: a batch of exactly
        one inline object of at least that many bytes.
        """
        alone = self._alone()
        if alone is not None and frames_size(alone[1]) >= self._detach_at:
            return detach(*self._single_inline_parts(alone))
        return self.message(keys)

    def _alone(self) -> list[Any] | None:
        """The event of a batch that is one inline object (its frames not joined), or None."""
        events = self._events
        if len(events) == 1 and events[0][0] == INLINE and type(events[0][1]) is list:
            return events[0]
        return None

    def _single_inline_parts(
        self, event: list[Any]
    ) -> tuple[bytes, int, bytes, list[Buffer], bytes]:
        """Head, sequence number, tail, frames and packed metadata of a one-object message."""
        _, frames, metadata = event
        return (
            single_inline_head(self.topic, self._producer_id),
            self._seq,
            single_inline_tail(self._serializer),
            frames,
            pack_metadata(metadata),
        )

    def message(self, keys: Sequence[str] = ()) -> bytes:
        """Encode the batch, given the store keys of `to_store` in order.

        Raises:
            ValueError: If the number of keys does not match `to_store`.
        """
        if len(keys) != len(self.to_store):
            raise ValueError(
                f"expected {len(self.to_store)} store keys, got {len(keys)}",
            )
        for slot, key in zip(self._key_slots, keys, strict=True):
            self._events[slot][1] = key
        alone = self._alone()
        if alone is not None:
            # One object (e.g. one that filled max_batch_bytes by itself):
            # copied once, straight into the message.
            return encode_single_inline(
                *self._single_inline_parts(alone),
                signing_key=self._signing_key,
            )
        events = self._events
        for event in events:
            if event[0] == INLINE and type(event[1]) is list:
                event[1] = b"".join(event[1])
        return encode_wire(
            self.topic,
            self._producer_id,
            self._seq,
            self._serializer,
            self._stores,
            self._events,
            signing_key=self._signing_key,
        )


class ProducerState(Generic[T]):
    """Producer logic with no I/O.

    Args:
        serializer: Serializer of inline objects.
        store_for: Returns the store of a topic, or None to send inline.
        filter_: Drops objects whose metadata it returns True for, before
            batching and aggregation.
        aggregator: Combines a full batch into one object; its metadata is
            the union of the batch's metadata.
        batch_size: Objects per message (per aggregated object).
        max_batch_bytes: A batch also goes out once its objects' serialized
            sizes add up to this many bytes (None: no limit). Ignored with
            an aggregator, whose objects are serialized only once combined.
        inline_threshold: Objects whose serialized size is below this many
            bytes travel inline even when their topic has a store. None sends
            every object of a store topic through the store.
        signing_key: If given, messages are signed with HMAC-SHA256.
        producer_id: Stable id of this producer (random by default).
    """

    def __init__(
        self,
        *,
        serializer: Serializer,
        store_for: Callable[[str], StoreView | None],
        filter_: Filter | None = None,
        aggregator: Callable[[list[T]], T] | None = None,
        batch_size: int = 1,
        max_batch_bytes: int | None = DEFAULT_MAX_BATCH_BYTES,
        inline_threshold: int | None = None,
        signing_key: bytes | None = None,
        producer_id: str | None = None,
    ) -> None:
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if max_batch_bytes is not None and (
            type(max_batch_bytes) is not int or max_batch_bytes < 1
        ):
            raise ValueError(
                f"max_batch_bytes must be None or an int >= 1, got {max_batch_bytes!r}",
            )
        if inline_threshold is not None and (
            type(inline_threshold) is not int or inline_threshold < 0
        ):
            raise ValueError(
                f"inline_threshold must be None or an int >= 0, got {inline_threshold!r}",
            )
        if filter_ is not None and not callable(filter_):
            raise TypeError("filter_ must be callable: metadata -> bool (True drops)")
        if aggregator is not None and not callable(aggregator):
            raise TypeError("aggregator must be callable: list of objects -> object")
        if signing_key is not None and not isinstance(signing_key, bytes):
            raise TypeError("signing_key must be bytes")
        self.producer_id = producer_id or uuid.uuid4().hex[:16]
        self._serializer = serializer
        self._store_for = store_for
        self._filter = filter_
        self._aggregator = aggregator
        self._batch_size = batch_size
        self._max_batch_bytes = max_batch_bytes
        self._threshold = inline_threshold
        self._signing_key = signing_key
        self._topics: dict[str, _Topic[T]] = {}
        self._tail = single_inline_tail(serializer.name)
        self._raw_tail = (
            single_inline_tail(RAW.name) if serializer_for(serializer, b"") is RAW else None
        )
        # The tail for bytes with no metadata, filter or signature (None: no
        # such fast lane): encode_bytes_alone().
        self._bytes_alone_tail = self._raw_tail if filter_ is None and signing_key is None else None
        self.direct_topics: set[str] = set()
        """Open topics whose objects each go out at once, inline, alone
        (batch size 1, no aggregator, no store): `encode_direct` serves them."""
        self._detach_at = _NEVER

    def detach_from(self, threshold: int) -> None:
        """Let `encode_direct` detach objects of `threshold` bytes or more.

        For publishers that send a `DetachedMessage` as one multi-part
        message. Signed producers never detach (frames are not signed).
        """
        if type(threshold) is not int or threshold < 0:
            raise ValueError(f"detach threshold must be an int >= 0, got {threshold!r}")
        if self._signing_key is None:
            self._detach_at = threshold

    def _topic(self, topic: str) -> _Topic[T]:
        state = self._topics.get(topic)
        if state is None:
            if type(topic) is not str:
                raise TypeError(f"topic must be a str, got {type(topic).__name__}")
            state = self._topics[topic] = _Topic()
            alone = self._batch_size == 1 and self._aggregator is None
            if alone and self._store_for(topic) is None:
                state.head = single_inline_head(topic, self.producer_id)
                self.direct_topics.add(topic)
        return state

    def accept(
        self,
        topic: str,
        obj: T,
        *,
        evict: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> bytes | DetachedMessage | ReadyBatch[T] | None:
        """Accept an object by the direct path if its topic has one, else `submit`.

        Returns:
            A message to publish as it is (direct path; detached, see
            `detach_from`), a batch to `prepare` and publish, or None when
            there is nothing to send yet.

        Raises:
            As `submit`.
        """
        if type(topic) is str and topic in self.direct_topics:
            return self.encode_direct(topic, obj, metadata)
        return self.submit(topic, obj, evict=evict, metadata=metadata)

    def encode_direct(
        self,
        topic: str,
        obj: T,
        metadata: dict[str, Any] | None = None,
    ) -> bytes | DetachedMessage | None:
        """Filter and encode one object of a topic in `direct_topics`.

        The fast path of `submit` + `prepare` + `message` for the common case;
        it writes the same bytes.

        Returns:
            The message to publish, or None if the filter dropped the object.

        Raises:
            TypeError: If metadata is not a plain-data dict with str keys.
        """
        alone_tail = self._bytes_alone_tail
        if (
            metadata is None
            and alone_tail is not None
            and type(obj) is bytes
            and len(cast(bytes, obj)) < self._detach_at
        ):
            state = self._topics[topic]
            seq = state.seq
            state.seq = seq + 1
            return encode_bytes_alone(state.head, seq, alone_tail, cast(bytes, obj))
        if metadata is None:
            packed = EMPTY_METADATA
            metadata = {}
        else:
            packed = pack_metadata(metadata)
        if self._filter is not None and self._filter(metadata):
            return None
        state = self._topics[topic]
        seq = state.seq
        state.seq = seq + 1
        frames: list[Buffer]
        if type(obj) is bytes and self._raw_tail is not None:
            tail, frames = self._raw_tail, [cast(bytes, obj)]  # serializer_for(): raw
        else:
            tail, frames = self._tail, self._serializer.dumps(obj)
        if self._detach_at != _NEVER and frames_size(frames) >= self._detach_at:
            return detach(state.head, seq, tail, frames, packed)
        return encode_single_inline(
            state.head,
            seq,
            tail,
            frames,
            packed,
            signing_key=self._signing_key,
        )

    def submit(
        self,
        topic: str,
        obj: T,
        *,
        evict: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> ReadyBatch[T] | None:
        """Accept an object; return a batch when the topic's buffer is full.

        Raises:
            TopicClosedError: If the topic was closed.
            TypeError: If metadata is not a dict with str keys.
        """
        state = self._topic(topic)
        if state.closed:
            raise TopicClosedError(topic)
        if metadata is None:
            metadata = {}
        elif type(metadata) is not dict or metadata:
            # Checked on accept, so a bad value fails the send() that passed
            # it rather than a later flush that would lose the whole batch.
            pack_metadata(metadata)
        if self._filter is not None and self._filter(metadata):
            return None
        item = PendingObject(obj, evict, metadata)
        if self._aggregator is None:
            state.buffered_bytes += frames_size(self._serialized(item, self._store_for(topic))[1])
        state.buffer.append(item)
        if len(state.buffer) >= self._batch_size or (
            self._max_batch_bytes is not None and state.buffered_bytes >= self._max_batch_bytes
        ):
            return self._take(topic, state)
        return None

    def flush(self, topic: str) -> ReadyBatch[T] | None:
        """Return the topic's buffered objects as a batch, if there are any."""
        state = self._topics.get(topic)
        if state is None or not state.buffer:
            return None
        return self._take(topic, state)

    def flush_all(self) -> list[ReadyBatch[T]]:
        """Return a batch for every topic with buffered objects."""
        return [self._take(topic, state) for topic, state in self._topics.items() if state.buffer]

    def close_topic(self, topic: str) -> ReadyBatch[T] | None:
        """Close a topic: its remaining objects plus end of stream, once."""
        state = self._topic(topic)
        state.closed = True
        self.direct_topics.discard(topic)
        if state.end_sent:
            return None
        state.end_sent = True
        batch = self._take(topic, state)
        return ReadyBatch(topic, batch.objects, end_of_stream=True)

    def _serialized(
        self,
        item: PendingObject[T],
        store: StoreView | None,
    ) -> tuple[Serializer, list[Buffer]]:
        """`item`'s serializer and frames for its store (or inline), made once."""
        if item.serializer is None or item.frames is None:
            if store is None:
                item.serializer = serializer_for(self._serializer, item.obj)
            else:
                item.serializer = store.serializer_for(item.obj)
            item.frames = item.serializer.dumps(item.obj)
        return item.serializer, item.frames

    def _take(self, topic: str, state: _Topic[T]) -> ReadyBatch[T]:
        objects, state.buffer = state.buffer, []
        state.buffered_bytes = 0
        if self._aggregator is not None and len(objects) > 0:
            metadata: dict[str, Any] = {}
            for item in objects:
                metadata.update(item.metadata)
            objects = [
                PendingObject(
                    self._aggregator([item.obj for item in objects]),
                    any(item.evict for item in objects),
                    metadata,
                ),
            ]
        return ReadyBatch(topic, objects)

    def prepare(self, ready: ReadyBatch[T]) -> PreparedBatch:
        """Serialize a batch and decide, per object, inline or store."""
        state = self._topics[ready.topic]
        seq = state.seq
        state.seq += 1
        store = self._store_for(ready.topic) if ready.objects else None
        to_store: list[list[Buffer]] = []
        key_slots: list[int] = []
        events: list[list[Any]] = []
        stores: list[list[Any]] = []
        store_index: dict[str, int] = {}
        # A message names one serializer for its inline objects: an object
        # alone in its message may keep its own (raw bytes), others are
        # written with the producer's.
        serializer_name = self._serializer.name
        alone = len(ready.objects) == 1
        for item in ready.objects:
            serializer, frames = self._serialized(item, store)
            if store is None or (
                self._threshold is not None and frames_size(frames) < self._threshold
            ):
                if serializer.name != self._serializer.name:
                    if alone and serializer is RAW:
                        serializer_name = RAW.name
                    else:
                        frames = self._serializer.dumps(item.obj)
                events.append([INLINE, frames, item.metadata])
                continue
            index = store_index.get(serializer.name)
            if index is None:
                index = store_index[serializer.name] = len(stores)
                stores.append(store_fields(store.config(serializer.name)))
            to_store.append(frames)
            key_slots.append(len(events))
            # The key (index 1) is filled in by PreparedBatch.message().
            events.append([KEY, None, index, item.evict, item.metadata])
        if ready.end_of_stream:
            events.append([END])
        return PreparedBatch(
            ready.topic,
            to_store,
            events,
            key_slots,
            self.producer_id,
            seq,
            serializer_name,
            stores,
            self._signing_key,
            self._detach_at,
        )
