from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from proxystore_stream._core.envelope import decode_batch
from proxystore_stream._core.envelope import encode_batch
from proxystore_stream.events import EndOfStreamEvent
from proxystore_stream.events import EventBatch
from proxystore_stream.events import NewObjectEvent
from proxystore_stream.events import NewObjectKeyEvent
from proxystore_stream.events import StoreConfig
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import MessageAuthenticationError

CONFIG = StoreConfig("s", "file", {"directory": "/tmp/x"}, "pickle")
BATCH = EventBatch(
    "frames",
    (
        NewObjectEvent(b"\x00abc", {"i": 1}),
        NewObjectKeyEvent("k1", CONFIG, True, {"i": 2, "tags": ["a"]}),
        NewObjectKeyEvent("k2", CONFIG, False, {}),
        EndOfStreamEvent(),
    ),
    "producer-1",
    7,
    "pickle",
)


def test_round_trip_every_event_type() -> None:
    assert decode_batch(encode_batch(BATCH)) == BATCH


def test_store_config_is_written_once_per_batch() -> None:
    data = encode_batch(BATCH)
    assert data.count(b"/tmp/x") == 1


def test_signed_round_trip_and_tamper_detection() -> None:
    key = b"secret"
    data = encode_batch(BATCH, signing_key=key)
    assert decode_batch(data, signing_key=key) == BATCH
    tampered = bytearray(data)
    tampered[-3] ^= 0xFF
    with pytest.raises(MessageAuthenticationError, match="signature"):
        decode_batch(bytes(tampered), signing_key=key)
    with pytest.raises(MessageAuthenticationError):
        decode_batch(data, signing_key=b"other key")


def test_unsigned_message_is_refused_when_signatures_required() -> None:
    with pytest.raises(MessageAuthenticationError, match="unsigned") as info:
        decode_batch(encode_batch(BATCH), signing_key=b"k", topic="frames")
    assert info.value.topic == "frames"
    assert isinstance(info.value, MalformedMessageError)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a proxystore-stream envelope"),
        (b"PSS", "not a proxystore-stream envelope"),
        (b"XYZ\x01\x90", "not a proxystore-stream envelope"),
        (b"PSS\x09" + msgpack.packb([]), "unsupported envelope version 9"),
        (b"PSS\x01" + msgpack.packb([1, 2]), "6-item array"),
        (b"PSS\x01\xc1", "invalid body"),
        (
            b"PSS\x01" + msgpack.packb(["t", "p", 0, "pickle", [], [[1, "k", 3, True, {}]]]),
            "store index out of range",
        ),
        (b"PSS\x01" + msgpack.packb(["t", "p", -1, "pickle", [], []]), "natural number"),
        (b"PSS\x01" + msgpack.packb(["t", "p", 0, "pickle", [], [[0, "str", {}]]]), "not binary"),
        (b"PSS\x01" + msgpack.packb(["t", "p", 0, "pickle", [], [[9]]]), "unknown event"),
    ],
)
def test_malformed_bytes_raise_one_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessageError, match=reason) as info:
        decode_batch(data, topic="frames")
    assert info.value.topic == "frames"
    assert "frames" in str(info.value)


def test_non_bytes_input_is_malformed() -> None:
    with pytest.raises(MalformedMessageError, match="expected bytes"):
        decode_batch("text", topic="t")  # type: ignore[arg-type]


def test_unencodable_metadata_is_a_type_error() -> None:
    batch = EventBatch("t", (NewObjectEvent(b"x", {"bad": object()}),))
    with pytest.raises(TypeError, match="plain data"):
        encode_batch(batch)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_only_raise_malformed(data: bytes) -> None:
    for candidate in (data, b"PSS\x01" + data, b"PSS\x02" + data):
        with contextlib.suppress(MalformedMessageError):
            decode_batch(candidate)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_fuzz_mutated_envelopes_only_raise_malformed(data: st.DataObject) -> None:
    valid = bytearray(encode_batch(BATCH))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(valid) - 1))
        valid[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(valid)))
    for candidate in (bytes(valid), bytes(valid[:cut])):
        try:
            batch = decode_batch(candidate)
        except MalformedMessageError:
            continue
        assert isinstance(batch, EventBatch)


@settings(max_examples=200, deadline=None)
@given(
    topic=st.text(max_size=20),
    metadata=st.dictionaries(
        st.text(max_size=8),
        st.one_of(
            st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(), st.binary()
        ),
        max_size=5,
    ),
    payload=st.binary(max_size=256),
)
def test_round_trip_property(topic: str, metadata: dict[str, object], payload: bytes) -> None:
    batch = EventBatch(topic, (NewObjectEvent(payload, metadata), EndOfStreamEvent()), "p", 3)
    assert decode_batch(encode_batch(batch)) == batch
