"""The one-inline-object fast paths write and read exactly what the general paths do."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream._core.consumer_state import NEED_MESSAGE
from proxystore_stream._core.consumer_state import ConsumerState
from proxystore_stream._core.consumer_state import InlineObject
from proxystore_stream._core.envelope import _pack_uint
from proxystore_stream._core.envelope import decode_wire
from proxystore_stream._core.producer_state import ProducerState
from proxystore_stream._core.producer_state import ReadyBatch
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.serialize import MsgpackSerializer
from proxystore_stream.serialize import PickleSerializer
from proxystore_stream.serialize import Serializer


def _pair(serializer: Serializer, **kwargs: Any) -> tuple[ProducerState[Any], ProducerState[Any]]:
    """Two producer cores with one id: one to drive directly, one the general way."""
    direct: ProducerState[Any] = ProducerState(
        serializer=serializer, store_for=lambda t: None, producer_id="p", **kwargs
    )
    general: ProducerState[Any] = ProducerState(
        serializer=serializer, store_for=lambda t: None, producer_id="p", **kwargs
    )
    return direct, general


def _general_message(state: ProducerState[Any], obj: Any, metadata: Any) -> bytes:
    ready = state.submit("t", obj, metadata=metadata)
    assert ready is not None
    return state.prepare(ready).message()


SIZES = [0, 1, 254, 255, 256, 65534, 65535, 65536, 300_000]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("signing_key", [None, b"k" * 32])
def test_direct_bytes_equal_the_general_encoding(size: int, signing_key: bytes | None) -> None:
    direct, general = _pair(PickleSerializer(), signing_key=signing_key)
    # The first send of a topic takes the general path and opens the direct one.
    _general_message(direct, b"first", None)
    _general_message(general, b"first", None)
    assert direct.direct_topics == {"t"}
    for i, obj in enumerate([b"x" * size, np.arange(size // 8 + 1), {"a": [1, 2]}]):
        metadata = None if i == 0 else {"i": i, "name": "n"}
        assert direct.encode_direct("t", obj, metadata) == _general_message(general, obj, metadata)


@settings(max_examples=200, deadline=None)
@given(
    obj=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text() | st.binary(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=10,
    ),
    metadata=st.dictionaries(
        st.text(max_size=8), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8), max_size=4
    ),
)
def test_direct_bytes_equal_the_general_encoding_for_any_plain_data(
    obj: Any, metadata: dict[str, Any]
) -> None:
    direct, general = _pair(MsgpackSerializer())
    _general_message(direct, None, None)
    _general_message(general, None, None)
    message = direct.encode_direct("t", obj, metadata)
    assert message == _general_message(general, obj, metadata)
    step = ConsumerState().take(message)
    assert isinstance(step, InlineObject)
    assert MsgpackSerializer().loads(step.data) == obj
    assert step.metadata == metadata


def test_direct_path_only_for_unbatched_inline_open_topics() -> None:
    assert _pair(PickleSerializer(), batch_size=2)[0].submit("t", 1) is None
    batched, _ = _pair(PickleSerializer(), batch_size=2)
    batched.submit("t", 1)
    assert batched.direct_topics == set()
    aggregated, _ = _pair(PickleSerializer(), aggregator=sum)
    aggregated.submit("t", 1)
    assert aggregated.direct_topics == set()
    stored: ProducerState[Any] = ProducerState(
        serializer=PickleSerializer(),
        store_for=lambda t: object(),  # type: ignore[arg-type,return-value]
    )
    stored._topic("t")
    assert stored.direct_topics == set()
    direct, _ = _pair(PickleSerializer())
    direct.submit("t", 1)
    direct.close_topic("t")
    assert direct.direct_topics == set()


def test_direct_path_applies_the_filter_and_checks_metadata() -> None:
    direct, _ = _pair(PickleSerializer(), filter_=lambda m: m.get("drop", False))
    _general_message(direct, 0, None)
    assert direct.encode_direct("t", 1, {"drop": True}) is None
    assert direct.encode_direct("t", 1, {"drop": False}) is not None
    with pytest.raises(TypeError, match="str keys"):
        direct.encode_direct("t", 1, {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="plain data"):
        direct.encode_direct("t", 1, {"x": object()})
    # Dropped and refused objects use no sequence numbers.
    assert decode_wire(direct.encode_direct("t", 2) or b"").seq == 2


def test_take_equals_receive_then_next_step() -> None:
    direct, _ = _pair(PickleSerializer())
    _general_message(direct, 0, None)
    message = direct.encode_direct("t", [1, 2], {"m": 1})
    assert message is not None
    fast = ConsumerState().take(message)
    slow_state = ConsumerState()
    slow_state.receive(message)
    slow = slow_state.next_step()
    assert fast == slow
    assert isinstance(fast, InlineObject)
    assert fast.event_id == f"{direct.producer_id}:1:0"
    assert slow_state.next_step() is NEED_MESSAGE


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_sequence_numbers_are_packed_as_msgpack_does(n: int) -> None:
    assert _pack_uint(n) == msgpack.packb(n)


def test_accept_picks_the_direct_path_once_the_topic_is_open() -> None:
    direct, _ = _pair(PickleSerializer(), filter_=lambda m: m.get("drop", False))
    first = direct.accept("t", 0)
    assert isinstance(first, ReadyBatch)  # the first object opens the topic
    direct.prepare(first)
    assert isinstance(direct.accept("t", 1), bytes)
    assert direct.accept("t", 2, metadata={"drop": True}) is None
    batched, _ = _pair(PickleSerializer(), batch_size=2)
    assert batched.accept("t", 0) is None
    assert isinstance(batched.accept("t", 1), ReadyBatch)


class _Capture:
    """A publisher that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, topic: str, message: bytes) -> None:
        self.sent.append(message)

    def close(self) -> None:
        """Nothing to release."""


class _Replay:
    """A subscriber that hands out given messages."""

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = iter(messages)

    def receive(self, timeout: float | None = None) -> bytes:
        return next(self._messages)

    def close(self) -> None:
        """Nothing to release."""


def _capturing(**kwargs: Any) -> tuple[_Capture, StreamProducer[Any]]:
    capture = _Capture()
    return capture, StreamProducer(capture, **kwargs)


def test_bytes_alone_in_a_message_travel_raw_and_batches_stay_pickled() -> None:
    capture, producer = _capturing()
    producer.send("t", b"first")  # general path (opens the direct one)
    producer.send("t", b"second")  # direct path
    producer.send("t", "a str")
    assert [decode_wire(m).serializer for m in capture.sent] == ["raw", "raw", "pickle"]
    # Raw: the event's data is the object itself, no tag byte in front.
    assert decode_wire(capture.sent[1]).events[0][1] == b"second"

    batched, batch_producer = _capturing(batch_size=3)
    for obj in (b"a", b"b", "c"):
        batch_producer.send("t", obj)
    assert [decode_wire(m).serializer for m in batched.sent] == ["pickle"]

    consumer: StreamConsumer[Any] = StreamConsumer(_Replay(capture.sent + batched.sent))
    assert [consumer.next() for _ in range(6)] == [b"first", b"second", "a str", b"a", b"b", "c"]


def test_an_allow_list_without_pickle_still_accepts_raw_bytes() -> None:
    capture, producer = _capturing()
    producer.send("t", b"plain bytes")
    producer.send("t", "pickled str")
    consumer: StreamConsumer[Any] = StreamConsumer(_Replay(capture.sent), serializers=["msgpack"])
    assert consumer.next() == b"plain bytes"
    with pytest.raises(MalformedMessageError, match="not accepted"):
        consumer.next()
