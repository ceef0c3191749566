"""StreamProducer and AsyncStreamProducer: thin I/O twins over `_core.producer_state`.

Each method is a few lines of I/O around one core call; all decisions
(filtering, batching, aggregation, inline-or-store, encoding) live in
`ProducerState`, written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import Generic
from typing import TypeVar
from typing import cast

from proxystore_stream._context import AsyncClosingContext
from proxystore_stream._context import ClosingContext
from proxystore_stream._core.producer_state import DEFAULT_MAX_BATCH_BYTES
from proxystore_stream._core.producer_state import PreparedBatch
from proxystore_stream._core.producer_state import ProducerState
from proxystore_stream._core.producer_state import ReadyBatch
from proxystore_stream.protocols import AsyncPublisher
from proxystore_stream.protocols import AsyncSendsDetached
from proxystore_stream.protocols import DetachedMessage
from proxystore_stream.protocols import Filter
from proxystore_stream.protocols import Publisher
from proxystore_stream.protocols import SendsDetached
from proxystore_stream.serialize import PickleSerializer
from proxystore_stream.serialize import Serializer
from proxystore_stream.store.base import Store

__all__ = ["AsyncStreamProducer", "StreamProducer"]

T = TypeVar("T")


class _Stores:
    """Which store each topic uses (pure lookup shared by both twins)."""

    def __init__(
        self,
        stores: Mapping[str, Store[Any] | None] | None,
        default_store: Store[Any] | None,
    ) -> None:
        if stores is not None and not isinstance(stores, Mapping):
            raise TypeError("stores must map topic names to Store (or None)")
        for store in [default_store, *(stores or {}).values()]:
            if store is not None and not isinstance(store, Store):
                raise TypeError(f"expected a Store, got {type(store).__name__}")
        self._stores = dict(stores or {})
        self._default = default_store

    def for_topic(self, topic: str) -> Store[Any] | None:
        return self._stores.get(topic, self._default)

    def all(self) -> list[Store[Any]]:
        unique = {id(s): s for s in [self._default, *self._stores.values()] if s}
        return list(unique.values())


def _detach_for(publisher: Any, state: ProducerState[Any]) -> None:
    """Let `state` detach large objects if `publisher` sends multi-part messages."""
    threshold = getattr(publisher, "detach_threshold", None)
    if type(threshold) is int and callable(getattr(publisher, "send_detached", None)):
        state.detach_from(threshold)


class StreamProducer(ClosingContext, Generic[T]):
    """Send objects to topics: inline through the broker, or via a store.

    Objects of a topic that has a store are put in the store and the event
    carries only the key; consumers get lazy proxies. Other objects travel
    inline, serialized in the event.

    Args:
        publisher: Any `Publisher` (a shim).
        stores: Store per topic; a topic mapped to None sends inline.
        default_store: Store of topics not in `stores` (None: inline).
        filter_: Drops objects whose metadata it returns True for (before
            batching and aggregation).
        aggregator: Combines each full batch into one object; its metadata
            is the union of the batch's metadata.
        batch_size: Objects per message (or per aggregated object).
        max_batch_bytes: A batch also goes out once its objects' serialized
            sizes reach this many bytes (default 256 KiB; None: no limit), so
            large objects are not held back and copied into one huge
            message. Not applied with an aggregator.
        inline_threshold: Per-message claim-check: objects whose serialized
            size is below this many bytes travel inline even when their
            topic has a store (like the SQS Extended Client at 256 KiB).
            None (default) sends every object of a store topic via the store.
        serializer: Serializer of inline objects (default pickle protocol 5).
        signing_key: Sign every message with HMAC-SHA256 under this key.

    Warning:
        A producer is not thread-safe: use one per thread.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        stores: Mapping[str, Store[Any] | None] | None = None,
        default_store: Store[Any] | None = None,
        filter_: Filter | None = None,
        aggregator: Callable[[list[T]], T] | None = None,
        batch_size: int = 1,
        max_batch_bytes: int | None = DEFAULT_MAX_BATCH_BYTES,
        inline_threshold: int | None = None,
        serializer: Serializer | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        if not callable(getattr(publisher, "send", None)):
            raise TypeError("publisher must have send(topic, message) and close()")
        self.publisher = publisher
        self._stores = _Stores(stores, default_store)
        self._state: ProducerState[T] = ProducerState(
            serializer=serializer or PickleSerializer(),
            store_for=self._stores.for_topic,
            filter_=filter_,
            aggregator=aggregator,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            inline_threshold=inline_threshold,
            signing_key=signing_key,
        )
        _detach_for(publisher, self._state)

    @property
    def producer_id(self) -> str:
        """Random id carried in every message (tells producers apart)."""
        return self._state.producer_id

    def _publish(self, ready: ReadyBatch[T]) -> None:
        prepared: PreparedBatch = self._state.prepare(ready)
        keys: list[str] = []
        if prepared.to_store:
            store = self._stores.for_topic(ready.topic)
            assert store is not None
            keys = store.put_serialized_batch(prepared.to_store)
        self._deliver(ready.topic, prepared.outgoing(keys))

    def _deliver(self, topic: str, message: bytes | DetachedMessage) -> None:
        if isinstance(message, bytes):
            self.publisher.send(topic, message)
        else:
            cast(SendsDetached, self.publisher).send_detached(topic, *message)

    def _flush_publisher(self) -> None:
        flush = getattr(self.publisher, "flush", None)
        if flush is not None:
            flush()

    def send(
        self,
        topic: str,
        obj: T,
        *,
        evict: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Send an object to a topic (buffered until the batch is full).

        Args:
            topic: The topic.
            obj: The object.
            evict: Evict the object from the store once a consumer resolves
                it. Set False when several consumers read the same object
                (then eviction is up to you). Ignored for inline objects.
            metadata: Plain-data dict carried with the event (for filters).

        Raises:
            TopicClosedError: If the topic was closed with `close_topics()`.
            TypeError: If metadata is not a plain-data dict with str keys.
        """
        accepted = self._state.accept(topic, obj, evict=evict, metadata=metadata)
        if isinstance(accepted, bytes):
            self.publisher.send(topic, accepted)
        elif isinstance(accepted, DetachedMessage):
            self._deliver(topic, accepted)
        elif accepted is not None:
            self._publish(accepted)

    def flush_topic(self, topic: str) -> None:
        """Send a topic's buffered objects now, as one (partial) batch."""
        ready = self._state.flush(topic)
        if ready is not None:
            self._publish(ready)
        self._flush_publisher()

    def flush(self) -> None:
        """Send every topic's buffered objects now, and flush the publisher."""
        for ready in self._state.flush_all():
            self._publish(ready)
        self._flush_publisher()

    def close_topics(self, *topics: str) -> None:
        """Flush and end each topic: consumers stop after its last object.

        Raises:
            TypeError: If a topic is not a str.
        """
        for topic in topics:
            ready = self._state.close_topic(topic)
            if ready is not None:
                self._publish(ready)
        self._flush_publisher()

    def close(
        self,
        *,
        topics: Iterable[str] = (),
        publisher: bool = True,
        stores: bool = False,
    ) -> None:
        """Flush everything, end `topics`, and close the publisher.

        Unlike ProxyStore, buffered objects of partial batches are sent, not lost.

        Args:
            topics: Topics to end (as `close_topics`).
            publisher: Close the publisher too.
            stores: Close the stores too.
        """
        if isinstance(topics, str):
            raise TypeError("topics must be an iterable of topic names, not a str")
        # Closing first lets each closed topic's last objects share the
        # end-of-stream message; then the other topics' partial batches go.
        self.close_topics(*topics)
        self.flush()
        if stores:
            for store in self._stores.all():
                store.close()
        if publisher:
            self.publisher.close()


class AsyncStreamProducer(AsyncClosingContext, Generic[T]):
    """Async twin of `StreamProducer`: same arguments, awaitable methods.

    Store writes run in a worker thread so they never block the event loop.
    """

    def __init__(
        self,
        publisher: AsyncPublisher,
        *,
        stores: Mapping[str, Store[Any] | None] | None = None,
        default_store: Store[Any] | None = None,
        filter_: Filter | None = None,
        aggregator: Callable[[list[T]], T] | None = None,
        batch_size: int = 1,
        max_batch_bytes: int | None = DEFAULT_MAX_BATCH_BYTES,
        inline_threshold: int | None = None,
        serializer: Serializer | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        if not callable(getattr(publisher, "send", None)):
            raise TypeError("publisher must have async send(topic, message) and close()")
        self.publisher = publisher
        self._stores = _Stores(stores, default_store)
        self._state: ProducerState[T] = ProducerState(
            serializer=serializer or PickleSerializer(),
            store_for=self._stores.for_topic,
            filter_=filter_,
            aggregator=aggregator,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            inline_threshold=inline_threshold,
            signing_key=signing_key,
        )
        _detach_for(publisher, self._state)

    @property
    def producer_id(self) -> str:
        """Random id carried in every message (tells producers apart)."""
        return self._state.producer_id

    async def _publish(self, ready: ReadyBatch[T]) -> None:
        prepared: PreparedBatch = self._state.prepare(ready)
        keys: list[str] = []
        if prepared.to_store:
            store = self._stores.for_topic(ready.topic)
            assert store is not None
            keys = await asyncio.to_thread(store.put_serialized_batch, prepared.to_store)
        await self._deliver(ready.topic, prepared.outgoing(keys))

    async def _deliver(self, topic: str, message: bytes | DetachedMessage) -> None:
        if isinstance(message, bytes):
            await self.publisher.send(topic, message)
        else:
            await cast(AsyncSendsDetached, self.publisher).send_detached(topic, *message)

    async def _flush_publisher(self) -> None:
        flush = getattr(self.publisher, "flush", None)
        if flush is not None:
            await flush()

    async def send(
        self,
        topic: str,
        obj: T,
        *,
        evict: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Send an object to a topic (see `StreamProducer.send`)."""
        accepted = self._state.accept(topic, obj, evict=evict, metadata=metadata)
        if isinstance(accepted, bytes):
            await self.publisher.send(topic, accepted)
        elif isinstance(accepted, DetachedMessage):
            await self._deliver(topic, accepted)
        elif accepted is not None:
            await self._publish(accepted)

    async def flush_topic(self, topic: str) -> None:
        """Send a topic's buffered objects now."""
        ready = self._state.flush(topic)
        if ready is not None:
            await self._publish(ready)
        await self._flush_publisher()

    async def flush(self) -> None:
        """Send every topic's buffered objects now, and flush the publisher."""
        for ready in self._state.flush_all():
            await self._publish(ready)
        await self._flush_publisher()

    async def close_topics(self, *topics: str) -> None:
        """Flush and end each topic."""
        for topic in topics:
            ready = self._state.close_topic(topic)
            if ready is not None:
                await self._publish(ready)
        await self._flush_publisher()

    async def close(
        self,
        *,
        topics: Iterable[str] = (),
        publisher: bool = True,
        stores: bool = False,
    ) -> None:
        """Flush everything, end `topics`, and close the publisher."""
        if isinstance(topics, str):
            raise TypeError("topics must be an iterable of topic names, not a str")
        await self.close_topics(*topics)
        await self.flush()
        if stores:
            for store in self._stores.all():
                await asyncio.to_thread(store.close)
        if publisher:
            await self.publisher.close()
