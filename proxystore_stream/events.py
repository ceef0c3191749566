"""Stream events: frozen data, no behaviour. Encoding lives in `_core.envelope`."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Any

__all__ = [
    "EndOfStreamEvent",
    "Event",
    "EventBatch",
    "NewObjectEvent",
    "NewObjectKeyEvent",
    "StoreConfig",
]


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """What a consumer needs to reach a store: plain data, safe in a message.

    Attributes:
        name: The store's name.
        kind: A registered connector kind (e.g. ``"file"``); never a class path.
        options: The connector's `config()` output (msgpack-safe values).
        serializer: Name of the registered serializer the store uses.
    """

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    serializer: str = "pickle"


@dataclass(frozen=True, slots=True)
class NewObjectEvent:
    """A new object carried inline.

    Attributes:
        data: The serialized object.
        metadata: User metadata of the object.
    """

    data: bytes
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewObjectKeyEvent:
    """A new object kept in a store; the event carries its key.

    Attributes:
        key: The object's key in the store.
        store: How to reach the store.
        evict: Whether the consumer evicts the object once it is resolved.
        metadata: User metadata of the object.
    """

    key: str
    store: StoreConfig
    evict: bool
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EndOfStreamEvent:
    """The producer that sent this closed the topic."""


Event = NewObjectEvent | NewObjectKeyEvent | EndOfStreamEvent


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The events of one message: one topic, one producer.

    Attributes:
        topic: The topic the events belong to.
        events: The events, in order.
        producer_id: Random id of the producer that sent the batch.
        seq: The producer's message counter for this topic (0, 1, 2, ...).
            With `producer_id` and an event's index it forms a stable event
            id, which consumers use to recognise duplicates.
        serializer: Registered serializer of the inline objects.
    """

    topic: str
    events: tuple[Event, ...]
    producer_id: str = ""
    seq: int = 0
    serializer: str = "pickle"
