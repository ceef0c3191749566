"""StreamConsumer and AsyncStreamConsumer: thin I/O twins over `_core.consumer_state`.

Decoding, filtering and end-of-stream tracking happen in `ConsumerState`;
turning a step into an object or proxy happens in `_Materializer`, shared by
both twins. The twins only wait for messages and touch stores.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any
from typing import Generic
from typing import Self
from typing import TypeVar

from proxystore_stream._context import AsyncClosingContext
from proxystore_stream._context import ClosingContext
from proxystore_stream._core.consumer_state import NEED_MESSAGE
from proxystore_stream._core.consumer_state import STREAM_END
from proxystore_stream._core.consumer_state import ConsumerState
from proxystore_stream._core.consumer_state import Discard
from proxystore_stream._core.consumer_state import InlineObject
from proxystore_stream._core.consumer_state import StoredObject
from proxystore_stream._types import Buffer
from proxystore_stream.events import StoreConfig
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.protocols import AsyncSubscriber
from proxystore_stream.protocols import DetachedMessage
from proxystore_stream.protocols import Filter
from proxystore_stream.protocols import Subscriber
from proxystore_stream.proxy import Proxy
from proxystore_stream.serialize import RAW
from proxystore_stream.serialize import get_serializer
from proxystore_stream.store.base import Store
from proxystore_stream.store.factory import StoreFactory
from proxystore_stream.store.registry import connector_class
from proxystore_stream.store.registry import store_from_config

__all__ = ["AsyncStreamConsumer", "StreamConsumer"]


T = TypeVar("T")

Delivery = InlineObject | StoredObject


class _Materializer:
    """Turn delivered steps into objects or proxies (no waiting; shared by twins)."""

    def __init__(self, serializers: Iterable[str] | None) -> None:
        self._allowed = None if serializers is None else frozenset(serializers)
        self.configs: dict[tuple[str, str], StoreConfig] = {}
        self._loads: dict[str, Callable[[Buffer], Any]] = {}

    def _check_serializer(self, name: str, topic: str) -> None:
        # Raw bytes run no code when read: accepted whatever the allow-list.
        if self._allowed is not None and name not in self._allowed and name != RAW.name:
            raise MalformedMessageError(
                f"serializer {name!r} is not accepted by this consumer "
                f"(accepted: {sorted(self._allowed)})",
                topic=topic,
            )

    def _loader(self, name: str, topic: str) -> Callable[[Buffer], Any]:
        self._check_serializer(name, topic)
        try:
            loads = get_serializer(name).loads
        except LookupError as exc:
            raise MalformedMessageError(str(exc), topic=topic) from None
        self._loads[name] = loads
        return loads

    def inline(self, step: InlineObject) -> Any:
        # The step stays around as the consumer's last delivery (for
        # last_event_id): let go of its data, or a large object's memory
        # stays in use until the next delivery and cannot be reused.
        data, step.data = step.data, b""
        if step.serializer == "raw":  # RAW.loads, inlined: raw bytes are the object
            return data
        loads = self._loads.get(step.serializer) or self._loader(step.serializer, step.topic)
        try:
            return loads(data)
        except MalformedMessageError as exc:
            raise MalformedMessageError(exc.reason, topic=step.topic) from exc

    def delivered(self, step: Delivery) -> Any:
        """What the user gets for a step: the object (inline) or a lazy proxy (stored)."""
        if type(step) is InlineObject:
            return self.inline(step)
        assert type(step) is StoredObject
        return Proxy(self.factory(step))

    def factory(self, step: StoredObject) -> StoreFactory[Any]:
        self._check_serializer(step.store.serializer, step.topic)
        # Fail now, not at resolve time, if the message names an unknown kind.
        connector_class(step.store.kind)
        self.configs.setdefault((step.store.name, step.store.kind), step.store)
        return StoreFactory(step.key, step.store, step.evict)

    def store(self, config: StoreConfig) -> Store[Any]:
        self.configs.setdefault((config.name, config.kind), config)
        return store_from_config(config)

    def used_stores(self) -> list[Store[Any]]:
        stores = [store_from_config(config) for config in self.configs.values()]
        self.configs.clear()
        return stores


class _LastDelivery:
    """The last-delivery properties both consumer twins share."""

    _last: Delivery | None

    @property
    def last_event_id(self) -> str | None:
        """Stable id of the event of the object returned last (None before the first).

        The id (``producer_id:seq:index``) is the same when a broker
        delivers the event again, so consumers can drop duplicates with it.
        """
        return None if self._last is None else self._last.event_id

    @property
    def last_topic(self) -> str | None:
        """Topic of the object returned last (None before the first)."""
        return None if self._last is None else self._last.topic


def _state(
    filter_: Filter | None,
    topics: Iterable[str] | None,
    producers: int | None,
    signing_key: bytes | None,
    skip_malformed: bool,
    source: str | None,
) -> ConsumerState:
    if isinstance(topics, str):
        topics = [topics]
    return ConsumerState(
        filter_=filter_,
        topics=topics,
        producers=producers,
        signing_key=signing_key,
        skip_malformed=skip_malformed,
        source=source,
    )


def _topic_hint(subscriber: Any, topics: Iterable[str] | None) -> str | None:
    names = topics if topics is not None else getattr(subscriber, "topics", None)
    if isinstance(names, str):
        return names
    return ", ".join(names) if names else None


class StreamConsumer(_LastDelivery, ClosingContext, Generic[T]):
    """Iterate over the objects of a stream.

    Iteration yields the object itself for inline events and a lazy `Proxy`
    for store events; it ends when every topic has ended (see `topics` and
    `producers`).

    Args:
        subscriber: Any `Subscriber` (a shim).
        filter_: Drops events whose metadata it returns True for. A dropped
            stored object sent with evict=True is evicted (no leak).
        topics: Topics whose end the stream waits for (default: every topic
            seen).
        producers: Producers that must close each topic before it ends
            (default: every producer seen on it).
        timeout: Seconds iteration waits for a message at most (None:
            forever); expiry raises `StreamTimeoutError`.
        signing_key: Accept only messages signed with this key.
        serializers: Names of serializers to accept (default: any
            registered). Use ``["msgpack"]`` to refuse pickles.
        skip_malformed: Log and skip malformed or unauthenticated messages
            instead of raising `MalformedMessageError`.

    Warning:
        A consumer is not thread-safe: use one per thread.
    """

    def __init__(
        self,
        subscriber: Subscriber,
        *,
        filter_: Filter | None = None,
        topics: Iterable[str] | None = None,
        producers: int | None = None,
        timeout: float | None = None,
        signing_key: bytes | None = None,
        serializers: Iterable[str] | None = None,
        skip_malformed: bool = False,
    ) -> None:
        if not hasattr(subscriber, "__iter__") and not hasattr(subscriber, "receive"):
            raise TypeError("subscriber must be iterable or have receive(timeout)")
        self.subscriber = subscriber
        self._state = _state(
            filter_,
            topics,
            producers,
            signing_key,
            skip_malformed,
            _topic_hint(subscriber, topics),
        )
        self._materializer = _Materializer(serializers)
        self._timeout = timeout
        # A subscriber that can hand over detached messages as they came.
        self._receive = getattr(subscriber, "receive_detached", None) or getattr(
            subscriber, "receive", None
        )
        self._iterator: Iterator[bytes] | None = None
        self._last: Delivery | None = None

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        try:
            return self.next(self._timeout)
        except SubscriberClosedError:
            raise StopIteration from None

    def _message(self, timeout: float | None) -> bytes:
        """The next message of a subscriber that has no `receive`."""
        if timeout is not None:
            raise TypeError(
                f"{type(self.subscriber).__name__} has no receive(timeout); "
                "timeouts need a subscriber that supports them",
            )
        if self._iterator is None:
            self._iterator = iter(self.subscriber)
        try:
            return next(self._iterator)
        except StopIteration:
            raise SubscriberClosedError("the subscriber's iteration ended") from None

    def _next_delivery(self, timeout: float | None) -> Delivery:
        state = self._state
        step = state.next_step()
        while True:
            if step is NEED_MESSAGE:
                receive = self._receive
                step = state.take(receive(timeout) if receive else self._message(timeout))
                continue
            if type(step) is InlineObject or type(step) is StoredObject:
                self._last = step
                return step
            if step is STREAM_END:
                ack = getattr(self.subscriber, "ack", None)
                if ack is not None:
                    ack()
                raise StopIteration
            assert isinstance(step, Discard)
            self._materializer.store(step.store).evict(step.key)
            step = self._state.next_step()

    def next_with_metadata(self, timeout: float | None = None) -> tuple[dict[str, Any], T]:
        """Return the next object (a proxy for store events) and its metadata.

        Args:
            timeout: Seconds to wait for a message at most (None: forever).

        Raises:
            StopIteration: When the stream has ended.
            StreamTimeoutError: If no message arrived within `timeout`.
            MalformedMessageError: If a message is not a valid envelope (the
                consumer stays usable: the next call reads the next message).
        """
        step = self._next_delivery(timeout)
        return step.metadata, self._materializer.delivered(step)

    def next_object_with_metadata(
        self,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], T]:
        """Return the next object itself (fetched from its store if needed) and metadata."""
        step = self._next_delivery(timeout)
        if isinstance(step, InlineObject):
            return step.metadata, self._materializer.inline(step)
        return step.metadata, self._materializer.factory(step)()

    def next(self, timeout: float | None = None) -> T:
        """Return the next object (a lazy proxy for store events)."""
        return self._materializer.delivered(self._next_delivery(timeout))  # type: ignore[no-any-return]

    def next_object(self, timeout: float | None = None) -> T:
        """Return the next object itself (never a proxy)."""
        return self.next_object_with_metadata(timeout)[1]

    def iter_with_metadata(self) -> Iterator[tuple[dict[str, Any], T]]:
        """Yield (metadata, object or proxy) pairs until the stream ends."""
        while True:
            try:
                yield self.next_with_metadata(self._timeout)
            except (StopIteration, SubscriberClosedError):
                return

    def iter_objects(self) -> Iterator[T]:
        """Yield objects themselves (never proxies) until the stream ends."""
        for _, obj in self.iter_objects_with_metadata():
            yield obj

    def iter_objects_with_metadata(self) -> Iterator[tuple[dict[str, Any], T]]:
        """Yield (metadata, object) pairs until the stream ends."""
        while True:
            try:
                yield self.next_object_with_metadata(self._timeout)
            except (StopIteration, SubscriberClosedError):
                return

    def close(self, *, stores: bool = False, subscriber: bool = True) -> None:
        """Close the subscriber and, with `stores`, the stores this consumer used."""
        if stores:
            for store in self._materializer.used_stores():
                store.close()
        if subscriber:
            self.subscriber.close()


class AsyncStreamConsumer(_LastDelivery, AsyncClosingContext, Generic[T]):
    """Async twin of `StreamConsumer`: same arguments, awaitable methods, `async for`.

    Store reads and evictions run in a worker thread. A cancelled `next()`
    loses no message if the subscriber's `receive()` is cancellation-safe
    (every shim of this library is).
    """

    def __init__(
        self,
        subscriber: AsyncSubscriber,
        *,
        filter_: Filter | None = None,
        topics: Iterable[str] | None = None,
        producers: int | None = None,
        timeout: float | None = None,
        signing_key: bytes | None = None,
        serializers: Iterable[str] | None = None,
        skip_malformed: bool = False,
    ) -> None:
        if not hasattr(subscriber, "__aiter__") and not hasattr(subscriber, "receive"):
            raise TypeError("subscriber must be async iterable or have async receive(timeout)")
        self.subscriber = subscriber
        self._state = _state(
            filter_,
            topics,
            producers,
            signing_key,
            skip_malformed,
            _topic_hint(subscriber, topics),
        )
        self._materializer = _Materializer(serializers)
        self._timeout = timeout
        # A subscriber that can hand over detached messages as they came.
        self._receive = getattr(subscriber, "receive_detached", None) or getattr(
            subscriber, "receive", None
        )
        # A subscriber that hands over a message it already has without awaiting.
        self._ready: Callable[[], bytes | DetachedMessage | None] | None = getattr(
            subscriber, "receive_ready", None
        )
        self._iterator: AsyncIterator[bytes] | None = None
        self._last: Delivery | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        # next(), inlined, with an object that is already here delivered
        # without awaiting anything: one coroutine per object instead of three.
        step = self._ready_step()
        if type(step) is InlineObject or type(step) is StoredObject:
            self._last = step
            return self._materializer.delivered(step)  # type: ignore[no-any-return]
        try:
            step = await self._deliver(step, self._timeout)
        except SubscriberClosedError:
            raise StopAsyncIteration from None
        return self._materializer.delivered(step)  # type: ignore[no-any-return]

    def _ready_step(self) -> Any:
        """The state's next step, fed a message the subscriber already has if it needs one."""
        step = self._state.next_step()
        if step is NEED_MESSAGE and self._ready is not None:
            message = self._ready()
            if message is not None:
                return self._state.take(message)
        return step

    async def _message(self, timeout: float | None) -> bytes:
        """The next message of a subscriber that has no `receive`."""
        if timeout is not None:
            raise TypeError(
                f"{type(self.subscriber).__name__} has no receive(timeout); "
                "timeouts need a subscriber that supports them",
            )
        if self._iterator is None:
            self._iterator = aiter(self.subscriber)
        try:
            return await anext(self._iterator)
        except StopAsyncIteration:
            raise SubscriberClosedError("the subscriber's iteration ended") from None

    async def _next_delivery(self, timeout: float | None) -> Delivery:
        return await self._deliver(self._ready_step(), timeout)

    async def _deliver(self, step: Any, timeout: float | None) -> Delivery:
        """Go on from `step` until an object is delivered (or the stream ends)."""
        state = self._state
        while True:
            if step is NEED_MESSAGE:
                receive = self._receive
                step = state.take(await (receive(timeout) if receive else self._message(timeout)))
                continue
            if type(step) is InlineObject or type(step) is StoredObject:
                self._last = step
                return step
            if step is STREAM_END:
                ack = getattr(self.subscriber, "ack", None)
                if ack is not None:
                    await ack()
                raise StopAsyncIteration
            assert isinstance(step, Discard)
            store = self._materializer.store(step.store)
            await asyncio.to_thread(store.evict, step.key)
            step = self._state.next_step()

    async def next_with_metadata(
        self,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], T]:
        """Return the next object (a proxy for store events) and its metadata.

        Raises:
            StopAsyncIteration: When the stream has ended.
            StreamTimeoutError: If no message arrived within `timeout`.
            MalformedMessageError: If a message is not a valid envelope.
        """
        step = await self._next_delivery(timeout)
        return step.metadata, self._materializer.delivered(step)

    async def next_object_with_metadata(
        self,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], T]:
        """Return the next object itself and its metadata."""
        step = await self._next_delivery(timeout)
        if isinstance(step, InlineObject):
            return step.metadata, self._materializer.inline(step)
        return step.metadata, await asyncio.to_thread(self._materializer.factory(step))

    async def next(self, timeout: float | None = None) -> T:
        """Return the next object (a lazy proxy for store events)."""
        step = await self._next_delivery(timeout)
        return self._materializer.delivered(step)  # type: ignore[no-any-return]

    async def next_object(self, timeout: float | None = None) -> T:
        """Return the next object itself (never a proxy)."""
        return (await self.next_object_with_metadata(timeout))[1]

    async def iter_with_metadata(self) -> AsyncIterator[tuple[dict[str, Any], T]]:
        """Yield (metadata, object or proxy) pairs until the stream ends."""
        while True:
            try:
                yield await self.next_with_metadata(self._timeout)
            except (StopAsyncIteration, SubscriberClosedError):
                return

    async def iter_objects(self) -> AsyncIterator[T]:
        """Yield objects themselves until the stream ends."""
        async for _, obj in self.iter_objects_with_metadata():
            yield obj

    async def iter_objects_with_metadata(self) -> AsyncIterator[tuple[dict[str, Any], T]]:
        """Yield (metadata, object) pairs until the stream ends."""
        while True:
            try:
                yield await self.next_object_with_metadata(self._timeout)
            except (StopAsyncIteration, SubscriberClosedError):
                return

    async def close(self, *, stores: bool = False, subscriber: bool = True) -> None:
        """Close the subscriber and, with `stores`, the stores this consumer used."""
        if stores:
            for store in self._materializer.used_stores():
                await asyncio.to_thread(store.close)
        if subscriber:
            await self.subscriber.close()
