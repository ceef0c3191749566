"""Detached messages: a large object's frames beside its envelope, not inside it.

On a transport with multi-part messages (ZeroMQ) the producer sends an
envelope of one inline object whose data is left empty, followed by the
object's serialized frames as parts of the same message. The producer then
never copies the object into the envelope, and the consumer takes the frame
the transport received as the object's data instead of copying it out of
the envelope: at 1 MiB, two copies fewer per message.

Detached frames are not covered by a signature, so signed producers never
detach and signing consumers refuse detached messages.
"""

from __future__ import annotations

from typing import Any

from proxystore_stream._core.envelope import encode_single_inline
from proxystore_stream._core.envelope import pack_metadata
from proxystore_stream._core.envelope import single_inline_event
from proxystore_stream._core.envelope import single_inline_head
from proxystore_stream._core.envelope import single_inline_parts
from proxystore_stream._core.envelope import single_inline_tail
from proxystore_stream._core.envelope import unpack_body
from proxystore_stream._types import Buffer
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.protocols import DetachedMessage

__all__ = ["as_envelope", "attach", "attached_parts", "detach", "detached_event", "joined"]


def detach(
    head: bytes,
    seq: int,
    tail: bytes,
    frames: list[Buffer],
    packed_metadata: bytes,
) -> DetachedMessage:
    """The detached form of `encode_single_inline(head, seq, tail, frames, packed_metadata)`."""
    return DetachedMessage(encode_single_inline(head, seq, tail, [], packed_metadata), frames)


def detached_event(
    message: bytes,
    frames: list[Any],
    *,
    topic: str | None = None,
    signing_key: bytes | None = None,
) -> tuple[list[Any], list[Any]]:
    """Check a detached message; return its unpacked body and its one inline event.

    Raises:
        MalformedMessageError: If it is not an unsigned envelope of one inline
            object with empty data, followed by at least one frame (naming
            `topic`); or if `signing_key` is given (frames are not signed).
    """
    if signing_key is not None:
        raise MalformedMessageError(
            "refused a message with detached frames: a signature does not cover them",
            topic=topic,
        )
    if not frames:
        raise MalformedMessageError("a detached message needs at least one frame", topic=topic)
    fields = unpack_body(message, topic=topic)
    event = single_inline_event(fields)
    if event is None or event[1] != b"":
        raise MalformedMessageError(
            "frames beside a message need an envelope of one inline object with empty data",
            topic=topic,
        )
    return fields, event


def joined(frames: list[Any]) -> bytes:
    """An object's data from its frames (the frame itself when there is one)."""
    if len(frames) == 1 and type(frames[0]) is bytes:
        return frames[0]
    return b"".join(frames)


def attach(message: bytes, frames: list[Any], *, topic: str | None = None) -> bytes:
    """Join a detached message back into one envelope (for a plain `receive()`).

    Raises:
        MalformedMessageError: As `detached_event`.
    """
    return b"".join(attached_parts(message, frames, topic=topic))


def attached_parts(message: bytes, frames: list[Any], *, topic: str | None = None) -> list[Any]:
    """The envelope `attach` returns, as parts: the frames themselves between two new ones.

    For a shim that sends one envelope per message but writes a list of
    buffers: the object is not copied into the envelope.

    Raises:
        MalformedMessageError: As `detached_event`.
    """
    fields, event = detached_event(message, frames, topic=topic)
    source, producer_id, seq, serializer, _, _ = fields
    try:
        metadata = pack_metadata(event[2])
    except TypeError as exc:
        raise MalformedMessageError(f"invalid metadata: {exc}", topic=topic) from exc
    return single_inline_parts(
        single_inline_head(source, producer_id),
        seq,
        single_inline_tail(serializer),
        list(frames),
        metadata,
    )


def as_envelope(message: bytes | DetachedMessage, *, topic: str | None = None) -> bytes:
    """`message` as one envelope: a detached message attached, bytes as they are.

    What a shim's plain `receive()` returns.

    Raises:
        MalformedMessageError: As `detached_event`.
    """
    if isinstance(message, DetachedMessage):
        return attach(*message, topic=topic)
    return message
