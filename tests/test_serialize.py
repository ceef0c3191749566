from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.serialize import MsgpackSerializer
from proxystore_stream.serialize import PickleSerializer
from proxystore_stream.serialize import get_serializer
from proxystore_stream.serialize import register_serializer

PICKLE = PickleSerializer()


def join(frames: list) -> bytes:  # type: ignore[type-arg]
    return b"".join(frames)


@pytest.mark.parametrize(
    "obj",
    [b"raw", b"", bytearray(b"ba"), "text", {"a": [1, 2.5, None]}, np.arange(10)],
)
def test_pickle_round_trip(obj: object) -> None:
    out = PICKLE.loads(join(PICKLE.dumps(obj)))
    if isinstance(obj, np.ndarray):
        assert np.array_equal(out, obj)
    else:
        assert out == obj
        assert type(out) is type(obj)


def test_large_buffers_are_not_copied_when_serializing() -> None:
    array = np.zeros(1_000_000)
    frames = PICKLE.dumps(array)
    assert any(
        isinstance(f, memoryview) and f.nbytes == array.nbytes and f.obj is not None for f in frames
    ), "the array's memory is referenced, not copied"


@pytest.mark.parametrize("data", [b"", b"\x07", b"\x01garbage", b"\x02\xff\xff\xff\xff"])
def test_malformed_payloads(data: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        PICKLE.loads(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_out_of_band_header(data: bytes) -> None:
    with contextlib.suppress(MalformedMessageError):
        PICKLE.loads(b"\x02" + data)


def test_msgpack_serializer_plain_data_only() -> None:
    serializer = MsgpackSerializer()
    assert serializer.loads(join(serializer.dumps({"a": [1, b"x"]}))) == {"a": [1, b"x"]}
    with pytest.raises(TypeError, match="plain data"):
        serializer.dumps(object())
    with pytest.raises(MalformedMessageError):
        serializer.loads(b"\xc1")


def test_registry() -> None:
    assert get_serializer("pickle").name == "pickle"
    with pytest.raises(LookupError, match="known"):
        get_serializer("nope")
    with pytest.raises(TypeError):
        register_serializer(object())  # type: ignore[arg-type]
