"""Serializers: how objects become bytes for the broker or a store.

A serializer turns an object into a list of buffers ("frames") that are
stored or sent back to back, and turns those bytes back into the object. The
envelope names the serializer used; a consumer only uses serializers
registered in this process, so a message can never choose the code that
decodes it.

| name | accepts | runs code on load? |
| --- | --- | --- |
| `pickle` (default) | any picklable object (protocol 5, out-of-band) | yes: trust or sign |
| `msgpack` | None, bool, int, float, str, bytes, list, dict | no |
| `raw` | `bytes` only, as they are (chosen automatically, see below) | no |

Under pickle (the default) a `bytes` object is written raw wherever it is
alone: in a store, and inline in a message of its own. Reading it back then
needs no copy. Consumers accept `raw` whatever their allow-list: reading raw
bytes runs no code.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any
from typing import Protocol
from typing import runtime_checkable

import msgpack

from proxystore_stream._types import Buffer
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import SerializationError

__all__ = [
    "MsgpackSerializer",
    "PickleSerializer",
    "RawBytesSerializer",
    "Serializer",
    "get_serializer",
    "register_serializer",
    "serializer_for",
]

_RAW_BYTES = 0
_PICKLE_INBAND = 1
_PICKLE_OUT_OF_BAND = 2


@runtime_checkable
class Serializer(Protocol):
    """Turns objects into frames and bytes back into objects."""

    name: str
    """Registry name carried in envelopes and store configs."""

    def dumps(self, obj: Any) -> list[Buffer]:
        """Serialize `obj` into frames (stored back to back)."""
        ...

    def loads(self, data: Buffer) -> Any:
        """Rebuild an object from the concatenated frames.

        Raises:
            MalformedMessageError: If `data` is not valid output of `dumps`.
        """
        ...


class PickleSerializer:
    """Pickle protocol 5 with out-of-band buffers (the default).

    `bytes` travel raw (no pickle at all). Objects exposing buffers to pickle
    protocol 5 (`bytearray`, NumPy arrays, ...) keep them out of band: the
    frames reference the object's memory instead of copying it, and on load
    the buffers are views into the received data.

    Warning:
        Unpickling runs code chosen by whoever wrote the bytes. Only consume
        from brokers and stores you trust, sign messages (`signing_key`), or
        use `MsgpackSerializer` for plain data.
    """

    name = "pickle"

    def dumps(self, obj: Any) -> list[Buffer]:
        """Serialize `obj` into frames."""
        if type(obj) is bytes:
            return [b"\x00", obj]
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(
                f"cannot pickle {type(obj).__name__} object: {exc}",
            ) from exc
        if not buffers:
            return [b"\x01", data]
        raws = [buffer.raw() for buffer in buffers]
        header = struct.pack(
            f"<BI{len(raws) + 1}Q",
            _PICKLE_OUT_OF_BAND,
            len(raws),
            len(data),
            *(raw.nbytes for raw in raws),
        )
        return [header, data, *raws]

    def loads(self, data: Buffer) -> Any:
        """Rebuild an object from `dumps` output."""
        if type(data) is bytes and data[:1] == b"\x00":
            return data[1:]
        view = memoryview(data)
        if not view.nbytes:
            raise MalformedMessageError("empty serialized object")
        tag = view[0]
        if tag == _RAW_BYTES:
            return bytes(view[1:])
        try:
            if tag == _PICKLE_INBAND:
                return pickle.loads(view[1:])
            if tag == _PICKLE_OUT_OF_BAND:
                return self._loads_out_of_band(view)
        except MalformedMessageError:
            raise
        except Exception as exc:
            raise MalformedMessageError(f"cannot unpickle object: {exc!r}") from exc
        raise MalformedMessageError(f"unknown serialization tag {tag}")

    @staticmethod
    def _loads_out_of_band(view: memoryview) -> Any:
        (count,) = struct.unpack_from("<I", view, 1)
        if count > (view.nbytes - 5) // 8:
            raise MalformedMessageError("buffer count exceeds the data")
        lengths = struct.unpack_from(f"<{count + 1}Q", view, 5)
        offset = 5 + 8 * (count + 1)
        if offset + sum(lengths) != view.nbytes:
            raise MalformedMessageError("buffer lengths do not match the data")
        pickled = view[offset : offset + lengths[0]]
        offset += lengths[0]
        buffers = []
        for length in lengths[1:]:
            buffers.append(view[offset : offset + length])
            offset += length
        return pickle.loads(pickled, buffers=buffers)


class MsgpackSerializer:
    """Plain data only (None, bool, int, float, str, bytes, list, dict).

    Loading msgpack never runs code, so this is the serializer to use when the
    broker or store might carry bytes from someone you do not trust.
    """

    name = "msgpack"

    def dumps(self, obj: Any) -> list[Buffer]:
        """Serialize plain data.

        Raises:
            SerializationError: If `obj` contains something msgpack cannot encode.
        """
        try:
            return [msgpack.packb(obj, use_bin_type=True)]
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"MsgpackSerializer handles plain data only: {exc}",
            ) from exc

    def loads(self, data: Buffer) -> Any:
        """Rebuild plain data."""
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as exc:
            raise MalformedMessageError(f"invalid msgpack object: {exc!r}") from exc


class RawBytesSerializer:
    """`bytes` stored exactly as they are, with no header.

    Stores use it automatically for `bytes` objects so that reading one back
    is a single read into the returned object: any header in front of the
    data would force a copy to slice it off, since `bytes` cannot be a view.
    """

    name = "raw"

    def dumps(self, obj: Any) -> list[Buffer]:
        """Return the bytes as the only frame.

        Raises:
            SerializationError: If `obj` is not `bytes`.
        """
        if type(obj) is not bytes:
            raise SerializationError(f"RawBytesSerializer takes bytes, not {type(obj).__name__}")
        return [obj]

    def loads(self, data: Buffer) -> Any:
        """Return the data as `bytes` (without a copy if it already is)."""
        return data if type(data) is bytes else bytes(data)


RAW = RawBytesSerializer()


def serializer_for(serializer: Serializer, obj: Any) -> Serializer:
    """The serializer `obj` is written with alone: raw for `bytes` under pickle.

    Pickle would write a `bytes` object as a tag byte and the bytes; written
    raw, reading it back needs no copy to drop the tag. Other serializers
    are kept as they are (they may mean to transform bytes too).
    """
    if type(obj) is bytes and serializer.name == "pickle":
        return RAW
    return serializer


_SERIALIZERS: dict[str, Serializer] = {
    "pickle": PickleSerializer(),
    "msgpack": MsgpackSerializer(),
    "raw": RAW,
}


def register_serializer(serializer: Serializer) -> None:
    """Make `serializer` usable by name in this process (e.g. by consumers).

    Raises:
        TypeError: If `serializer` does not implement the Serializer protocol.
    """
    if not isinstance(serializer, Serializer):
        raise TypeError("serializer must have a name, dumps() and loads()")
    _SERIALIZERS[serializer.name] = serializer


def get_serializer(name: str) -> Serializer:
    """Return the serializer registered as `name`.

    Raises:
        LookupError: If no serializer is registered under `name`.
    """
    try:
        return _SERIALIZERS[name]
    except KeyError:
        raise LookupError(
            f"No serializer {name!r} is registered; known: {sorted(_SERIALIZERS)}",
        ) from None
