"""The wire format of an event batch: msgpack in a small versioned frame.

Layout::

    b"PSS" version(1 byte) [HMAC-SHA256 (32 bytes), version 2 only] body

`body` is a msgpack array ``[topic, producer_id, seq, serializer, stores,
events]``. `stores` lists each distinct store config once as ``[name, kind,
options, serializer]``; key events refer to it by index, so a batch of many
keys does not repeat the config. Events are arrays tagged by their first
element: ``[0, data, metadata]`` (inline), ``[1, key, store_index, evict,
metadata]`` (by key), ``[2]`` (end of stream).

Nothing here unpickles or imports: decoding untrusted bytes yields plain
data or `MalformedMessageError`. Signed envelopes are verified before the
body is even unpacked.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from dataclasses import dataclass
from typing import Any

import msgpack

from proxystore_stream._types import Buffer
from proxystore_stream.events import EndOfStreamEvent
from proxystore_stream.events import Event
from proxystore_stream.events import EventBatch
from proxystore_stream.events import NewObjectEvent
from proxystore_stream.events import NewObjectKeyEvent
from proxystore_stream.events import StoreConfig
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import MessageAuthenticationError

MAGIC = b"PSS"
UNSIGNED = 1
SIGNED = 2
_DIGEST_SIZE = 32
_HEADER = len(MAGIC) + 1
_SLICE_LIMIT = 4096

INLINE = 0
KEY = 1
END = 2

_packers = threading.local()
_BIN8 = struct.Struct(">BB").pack
_BIN16 = struct.Struct(">BH").pack
_BIN32 = struct.Struct(">BI").pack


def _pack(obj: Any) -> bytes:
    # msgpack.packb makes a Packer (and its buffer) per call; one per thread
    # is reused instead. Packing calls no Python code, so it never re-enters.
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer()
    return packer.pack(obj)  # type: ignore[no-any-return]


def _pack_uint(n: int) -> bytes:
    """Msgpack's encoding of a natural number (the smallest form, as msgpack's own)."""
    if n < 0x80:
        return n.to_bytes(1, "big")
    if n < 0x100:
        return b"\xcc" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


def _bin_header(size: int) -> bytes:
    """Msgpack's header of a binary of `size` bytes (the smallest form, as msgpack's own).

    Raises:
        ValueError: If `size` is 4 GiB or more (msgpack's limit).
    """
    if size < 0x100:
        return _BIN8(0xC4, size)
    if size < 0x10000:
        return _BIN16(0xC5, size)
    if size < 0x100000000:
        return _BIN32(0xC6, size)
    raise ValueError(f"an inline object of {size} bytes is too large; send it via a store")


def _sign(key: bytes, body: bytes | memoryview) -> bytes:
    return hmac.digest(key, body, hashlib.sha256)


def encode_wire(
    topic: str,
    producer_id: str,
    seq: int,
    serializer: str,
    stores: list[list[Any]],
    events: list[list[Any]],
    *,
    signing_key: bytes | None = None,
) -> bytes:
    """Encode a batch already in wire form (the producer's fast path).

    Raises:
        TypeError: If event metadata holds values msgpack cannot encode.
    """
    try:
        body = msgpack.packb(
            [topic, producer_id, seq, serializer, stores, events],
            use_bin_type=True,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            "Event metadata must be plain data (str keys; None, bool, int, "
            f"float, str, bytes, list, dict values): {exc}",
        ) from exc
    assert isinstance(body, bytes)
    if signing_key is None:
        return b"PSS\x01" + body
    return b"PSS\x02" + _sign(signing_key, body) + body


def single_inline_head(topic: str, producer_id: str) -> bytes:
    """The constant start of a producer's one-inline-object messages on `topic`.

    With `single_inline_tail` and `encode_single_inline` this writes the same
    bytes as `encode_wire` for a batch of one inline event, without building
    the batch or copying the object more than once.
    """
    return b"PSS\x01\x96" + _pack(topic) + _pack(producer_id)


def single_inline_tail(serializer: str) -> bytes:
    """The bytes between a one-inline-object message's sequence number and object."""
    return _pack(serializer) + b"\x90\x91\x93" + _pack(INLINE)


def pack_metadata(metadata: Any) -> bytes:
    """Check and encode event metadata.

    Raises:
        TypeError: If metadata is not a dict with str keys and plain-data values.
    """
    if type(metadata) is not dict or not all(type(k) is str for k in metadata):
        raise TypeError("metadata must be a dict with str keys")
    try:
        return _pack(metadata)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            "metadata values must be plain data (None, bool, int, float, str, "
            f"bytes, list, dict): {exc}",
        ) from exc


EMPTY_METADATA = b"\x80"
"""`pack_metadata({})`."""


def frames_size(frames: list[Buffer]) -> int:
    """Total bytes of a serializer's frames."""
    size = 0
    for frame in frames:
        size += len(frame) if type(frame) is bytes else memoryview(frame).nbytes
    return size


def encode_single_inline(
    head: bytes,
    seq: int,
    tail: bytes,
    frames: list[Buffer],
    packed_metadata: bytes,
    *,
    signing_key: bytes | None = None,
) -> bytes:
    """Encode a message of one inline object from its parts (the hot path).

    Args:
        head: `single_inline_head(topic, producer_id)`.
        seq: The message's sequence number.
        tail: `single_inline_tail(serializer)`.
        frames: The serialized object; concatenated once, into the message.
        packed_metadata: `pack_metadata(metadata)`.
        signing_key: If given, sign the message (version 2).

    Raises:
        ValueError: If the object is 4 GiB or more (msgpack's limit).
    """
    size = 0
    for frame in frames:  # frames_size(), inlined: this runs once per message
        size += len(frame) if type(frame) is bytes else memoryview(frame).nbytes
    length = _bin_header(size)
    if signing_key is None:
        return b"".join((head, _pack_uint(seq), tail, length, *frames, packed_metadata))
    body = (head[_HEADER:], _pack_uint(seq), tail, length, *frames, packed_metadata)
    mac = hmac.new(signing_key, digestmod=hashlib.sha256)
    for part in body:
        mac.update(part)
    return b"".join((b"PSS\x02", mac.digest(), *body))


def single_inline_parts(
    head: bytes,
    seq: int,
    tail: bytes,
    frames: list[Buffer],
    packed_metadata: bytes,
) -> list[Buffer]:
    """The unsigned `encode_single_inline` message as parts whose concatenation it is.

    The frames are parts of their own, not copied: for a broker client that
    writes a list of buffers (a gathered write) instead of one bytes object.

    Raises:
        ValueError: If the object is 4 GiB or more (msgpack's limit).
    """
    prefix = b"".join((head, _pack_uint(seq), tail, _bin_header(frames_size(frames))))
    return [prefix, *frames, packed_metadata]


def encode_bytes_alone(head: bytes, seq: int, tail: bytes, data: bytes) -> bytes:
    """`encode_single_inline` of raw `bytes` with no metadata, unsigned (the hottest path).

    Args:
        head: `single_inline_head(topic, producer_id)`.
        seq: The message's sequence number.
        tail: `single_inline_tail("raw")`.
        data: The object.

    Raises:
        ValueError: If `data` is 4 GiB or more (msgpack's limit).
    """
    return b"".join((head, _pack_uint(seq), tail, _bin_header(len(data)), data, EMPTY_METADATA))


def store_fields(config: StoreConfig) -> list[Any]:
    """A store config in wire form."""
    return [config.name, config.kind, config.options, config.serializer]


def encode_batch(batch: EventBatch, *, signing_key: bytes | None = None) -> bytes:
    """Encode a batch as bytes for a broker.

    Args:
        batch: The batch to encode.
        signing_key: If given, the envelope carries an HMAC-SHA256 of its body.

    Raises:
        TypeError: If event metadata holds values msgpack cannot encode.
    """
    stores: list[list[Any]] = []
    store_index: dict[int, int] = {}
    events: list[list[Any]] = []
    for event in batch.events:
        if type(event) is NewObjectEvent:
            events.append([INLINE, event.data, event.metadata])
        elif type(event) is NewObjectKeyEvent:
            index = store_index.get(id(event.store))
            if index is None:
                index = store_index[id(event.store)] = len(stores)
                stores.append(store_fields(event.store))
            events.append([KEY, event.key, index, event.evict, event.metadata])
        else:
            events.append([END])
    return encode_wire(
        batch.topic,
        batch.producer_id,
        batch.seq,
        batch.serializer,
        stores,
        events,
        signing_key=signing_key,
    )


def decode_batch(
    data: bytes,
    *,
    topic: str | None = None,
    signing_key: bytes | None = None,
) -> EventBatch:
    """Decode bytes from a broker into a batch of event dataclasses.

    Raises:
        MessageAuthenticationError: If `signing_key` is given and the message
            is unsigned or its signature does not match.
        MalformedMessageError: If the bytes are not a valid envelope.
    """
    wire = decode_wire(data, topic=topic, signing_key=signing_key)
    events: list[Event] = []
    for raw in wire.events:
        if raw[0] == INLINE:
            events.append(NewObjectEvent(raw[1], raw[2]))
        elif raw[0] == KEY:
            events.append(NewObjectKeyEvent(raw[1], wire.stores[raw[2]], raw[3], raw[4]))
        else:
            events.append(EndOfStreamEvent())
    return EventBatch(wire.topic, tuple(events), wire.producer_id, wire.seq, wire.serializer)


@dataclass(slots=True)
class WireBatch:
    """A validated batch in wire form: events stay tagged lists (fast path).

    Inline events are ``[0, data, metadata]``, key events ``[1, key,
    store_index, evict, metadata]`` with `stores[store_index]` their config,
    end events ``[2]``.
    """

    topic: str
    producer_id: str
    seq: int
    serializer: str
    stores: list[StoreConfig]
    events: list[list[Any]]


def decode_wire(
    data: bytes,
    *,
    topic: str | None = None,
    signing_key: bytes | None = None,
) -> WireBatch:
    """Decode and validate bytes from a broker, keeping events in wire form.

    Args:
        data: The message.
        topic: Where the message came from, for error messages.
        signing_key: If given, only envelopes signed with this key are accepted.

    Raises:
        MessageAuthenticationError: If `signing_key` is given and the message
            is unsigned or its signature does not match.
        MalformedMessageError: If the bytes are not a valid envelope.
    """
    return wire_from_fields(unpack_body(data, topic=topic, signing_key=signing_key), topic)


def unpack_body(
    data: bytes,
    *,
    topic: str | None = None,
    signing_key: bytes | None = None,
) -> Any:
    """Check the frame (and signature) of a message and unpack its body.

    The result is plain data, not yet validated: pass it to
    `wire_from_fields` (or `single_inline_event` first, for the fast path).

    Raises:
        MessageAuthenticationError: As `decode_wire`.
        MalformedMessageError: If the frame or the msgpack body is invalid.
    """
    if signing_key is None and type(data) is bytes and data[:4] == b"PSS\x01":
        # Slicing copies; for small messages that is cheaper than a view.
        body: bytes | memoryview = (
            data[_HEADER:] if len(data) <= _SLICE_LIMIT else memoryview(data)[_HEADER:]
        )
    else:
        body = _verified_body(data, topic, signing_key)
    try:
        # strict_map_key: map keys are str or bytes, never containers.
        return msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise MalformedMessageError(f"invalid body: {exc!r}", topic=topic) from exc


def _verified_body(data: Any, topic: str | None, signing_key: bytes | None) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessageError(
            f"expected bytes, got {type(data).__name__}",
            topic=topic,
        )
    view = memoryview(data)
    if view.nbytes < _HEADER or view[:3] != MAGIC:
        raise MalformedMessageError("not a proxystore-stream envelope", topic=topic)
    version = view[3]
    if version == SIGNED:
        if view.nbytes < _HEADER + _DIGEST_SIZE:
            raise MalformedMessageError("truncated signature", topic=topic)
        body = view[_HEADER + _DIGEST_SIZE :]
        if signing_key is not None:
            signature = view[_HEADER : _HEADER + _DIGEST_SIZE]
            if not hmac.compare_digest(signature, _sign(signing_key, body)):
                raise MessageAuthenticationError(
                    "signature does not match (tampered, or signed with another key)",
                    topic=topic,
                )
        return body
    if version == UNSIGNED:
        if signing_key is not None:
            raise MessageAuthenticationError(
                "message is unsigned but this consumer requires signatures",
                topic=topic,
            )
        return view[_HEADER:]
    raise MalformedMessageError(f"unsupported envelope version {version}", topic=topic)


def _is_body(fields: Any) -> bool:
    """One combined check of a body's shape; `_diagnose` says what was wrong."""
    return (
        type(fields) is list
        and len(fields) == 6
        and type(fields[0]) is str
        and type(fields[1]) is str
        and type(fields[2]) is int
        and fields[2] >= 0
        and type(fields[3]) is str
        and type(fields[4]) is list
        and type(fields[5]) is list
    )


def single_inline_event(fields: Any) -> list[Any] | None:
    """The event of an unpacked body holding exactly one valid inline event.

    This is the consumer's fast path: one combined check instead of
    `wire_from_fields`. None means "validate the long way", not "invalid".
    A body it accepts is one `wire_from_fields` accepts too: a 6-item array
    of topic, producer id, natural sequence number, serializer, no stores and
    one ``[0, bytes, map]`` event.
    """
    if _is_body(fields) and fields[4] == [] and len(fields[5]) == 1:
        event = fields[5][0]
        if (
            type(event) is list
            and len(event) == 3
            and event[0] == INLINE
            and type(event[1]) is bytes
            and type(event[2]) is dict
        ):
            return event
    return None


def wire_from_fields(fields: Any, topic: str | None = None) -> WireBatch:
    """Validate an unpacked body (from `unpack_body`) as a batch.

    Raises:
        MalformedMessageError: If it is not a valid batch (naming `topic`).
    """
    try:
        return _wire_from_fields(fields)
    except MalformedMessageError as exc:
        raise MalformedMessageError(exc.reason, topic=topic) from None
    except Exception as exc:
        raise MalformedMessageError(f"invalid body: {exc!r}", topic=topic) from exc


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise MalformedMessageError(what)


def _wire_from_fields(fields: Any) -> WireBatch:
    if not _is_body(fields):
        _diagnose(fields)
    topic, producer_id, seq, serializer, raw_stores, events = fields
    stores = [_store_from_fields(store) for store in raw_stores] if raw_stores else []
    for raw in events:
        if type(raw) is not list or not raw:
            raise MalformedMessageError("event is not a tagged array")
        tag = raw[0]
        if tag == INLINE and len(raw) == 3:
            if type(raw[1]) is not bytes or type(raw[2]) is not dict:
                _expect(type(raw[1]) is bytes, "inline object is not binary")
                _expect(False, "metadata is not a map")
        elif tag == KEY and len(raw) == 5:
            _, key, index, evict, metadata = raw
            _expect(type(key) is str, "store key is not a string")
            _expect(
                type(index) is int and 0 <= index < len(stores),
                "store index out of range",
            )
            _expect(type(evict) is bool, "evict flag is not a boolean")
            _expect(type(metadata) is dict, "metadata is not a map")
        elif not (tag == END and len(raw) == 1):
            raise MalformedMessageError(f"unknown event {str(raw)[:40]}")
    return WireBatch(topic, producer_id, seq, serializer, stores, events)


def _diagnose(fields: Any) -> None:
    _expect(type(fields) is list and len(fields) == 6, "body is not a 6-item array")
    topic, producer_id, seq, serializer, raw_stores, events = fields
    _expect(type(topic) is str, "topic is not a string")
    _expect(type(producer_id) is str, "producer id is not a string")
    _expect(type(seq) is int and seq >= 0, "sequence number is not a natural number")
    _expect(type(serializer) is str, "serializer is not a string")
    _expect(type(raw_stores) is list, "stores is not an array")
    _expect(type(events) is list, "events is not an array")


def _store_from_fields(fields: Any) -> StoreConfig:
    _expect(type(fields) is list and len(fields) == 4, "store config is not a 4-item array")
    name, kind, options, serializer = fields
    _expect(type(name) is str, "store name is not a string")
    _expect(type(kind) is str, "store kind is not a string")
    _expect(type(options) is dict, "store options are not a map")
    _expect(type(serializer) is str, "store serializer is not a string")
    return StoreConfig(name, kind, options, serializer)
