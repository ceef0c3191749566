"""Producer and consumer cores driven back to back, with no broker and no store."""

from __future__ import annotations

from typing import Any

import pytest

from proxystore_stream._core.consumer_state import NEED_MESSAGE
from proxystore_stream._core.consumer_state import STREAM_END
from proxystore_stream._core.consumer_state import ConsumerState
from proxystore_stream._core.consumer_state import Discard
from proxystore_stream._core.consumer_state import InlineObject
from proxystore_stream._core.consumer_state import StoredObject
from proxystore_stream._core.producer_state import ProducerState
from proxystore_stream.events import StoreConfig
from proxystore_stream.exceptions import SerializationError
from proxystore_stream.exceptions import TopicClosedError
from proxystore_stream.serialize import PickleSerializer

SERIALIZER = PickleSerializer()


class FakeStoreView:
    """The pure part of a store: serializer and config (no I/O in the core)."""

    def serializer_for(self, obj: Any) -> PickleSerializer:
        return SERIALIZER

    def config(self, serializer: str | None = None) -> StoreConfig:
        return StoreConfig("s", "memory", {"instance": "x"}, serializer or "pickle")


def producer(**kwargs: Any) -> ProducerState[Any]:
    store = kwargs.pop("store", None)
    return ProducerState(serializer=SERIALIZER, store_for=lambda topic: store, **kwargs)


def messages(state: ProducerState[Any], ready: Any) -> list[bytes]:
    prepared = state.prepare(ready)
    keys = [f"key{i}" for i in range(len(prepared.to_store))]
    return [prepared.message(keys)]


def drain(consumer: ConsumerState) -> list[Any]:
    steps = []
    while True:
        step = consumer.next_step()
        if step is NEED_MESSAGE or step is STREAM_END:
            steps.append(step)
            return steps
        steps.append(step)


def test_batching_sends_one_message_per_full_batch() -> None:
    state = producer(batch_size=3)
    ready = [state.submit("t", i) for i in range(7)]
    assert [r is not None for r in ready] == [False, False, True, False, False, True, False]
    tail = state.flush("t")
    assert tail is not None
    assert [o.obj for o in tail.objects] == [6]
    assert state.flush("t") is None


def test_aggregation_unions_metadata_and_ors_evict() -> None:
    state = producer(batch_size=3, aggregator=sum)
    state.submit("t", 1, metadata={"a": 1}, evict=False)
    state.submit("t", 2, metadata={"b": 2}, evict=True)
    ready = state.submit("t", 3, metadata={"a": 3})
    assert ready is not None
    (obj,) = ready.objects
    assert (obj.obj, obj.metadata, obj.evict) == (6, {"a": 3, "b": 2}, True)


def test_filter_runs_before_batching() -> None:
    state = producer(batch_size=2, filter_=lambda m: m.get("drop", False))
    assert state.submit("t", 1, metadata={"drop": True}) is None
    assert state.submit("t", 2) is None
    ready = state.submit("t", 3)
    assert ready is not None
    assert [o.obj for o in ready.objects] == [2, 3]


def test_closed_topic_refuses_objects_and_ends_once() -> None:
    state = producer()
    first = state.close_topic("t")
    assert first is not None
    assert first.end_of_stream
    assert state.close_topic("t") is None
    with pytest.raises(TopicClosedError) as info:
        state.submit("t", 1)
    assert info.value.topic == "t"


@pytest.mark.parametrize(
    ("metadata", "match"),
    [([1], "dict with str keys"), ({1: 2}, "dict with str keys"), ({"x": object()}, "plain data")],
)
def test_bad_metadata_fails_the_send_that_passed_it(metadata: Any, match: str) -> None:
    state = producer()
    with pytest.raises(TypeError, match=match):
        state.submit("t", 1, metadata=metadata)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"batch_size": 0}, ValueError),
        ({"inline_threshold": -1}, ValueError),
        ({"filter_": 3}, TypeError),
        ({"aggregator": "x"}, TypeError),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        producer(**kwargs)


def test_inline_and_stored_objects_reach_the_consumer_in_order() -> None:
    state = producer(store=FakeStoreView(), inline_threshold=100, batch_size=3)
    state.submit("t", b"small")
    state.submit("t", b"x" * 1000, metadata={"big": True})
    ready = state.submit("t", b"tiny")
    assert ready is not None
    prepared = state.prepare(ready)
    assert len(prepared.to_store) == 1
    consumer = ConsumerState()
    consumer.receive(prepared.message(["k0"]))
    steps = drain(consumer)
    assert isinstance(steps[0], InlineObject)
    assert SERIALIZER.loads(steps[0].data) == b"small"
    assert isinstance(steps[1], StoredObject)
    assert (steps[1].key, steps[1].metadata, steps[1].evict) == ("k0", {"big": True}, True)
    assert isinstance(steps[2], InlineObject)
    assert steps[3] is NEED_MESSAGE
    assert len({s.event_id for s in steps[:3]}) == 3


def test_wrong_number_of_keys_is_refused() -> None:
    state = producer(store=FakeStoreView())
    ready = state.submit("t", 1)
    prepared = state.prepare(ready)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected 1 store keys"):
        prepared.message([])


def test_consumer_filter_discards_evictable_stored_objects() -> None:
    state = producer(store=FakeStoreView(), batch_size=2)
    state.submit("t", 1, evict=True, metadata={"keep": False})
    ready = state.submit("t", 2, evict=False, metadata={"keep": False})
    consumer = ConsumerState(filter_=lambda m: not m["keep"])
    consumer.receive(messages(state, ready)[0])
    first = consumer.next_step()
    assert isinstance(first, Discard)
    assert first.key == "key0"
    # The non-evicting object is skipped without a Discard (someone else owns it).
    assert consumer.next_step() is NEED_MESSAGE


def test_stream_ends_when_every_producer_of_every_topic_closed() -> None:
    a, b = producer(), producer()
    consumer = ConsumerState()
    for state in (a, b):
        consumer.receive(messages(state, state.submit("t1", 1))[0])
    consumer.receive(messages(a, a.submit("t2", 2))[0])
    consumer.receive(messages(a, a.close_topic("t1"))[0])
    assert [type(s).__name__ for s in drain(consumer)][-1] == "_Sentinel"
    consumer.receive(messages(b, b.close_topic("t1"))[0])
    steps = drain(consumer)
    assert steps[-1] is NEED_MESSAGE, "t2 is still open"
    consumer.receive(messages(a, a.close_topic("t2"))[0])
    assert drain(consumer)[-1] is STREAM_END
    assert consumer.ended


def test_explicit_producer_count_waits_for_late_producers() -> None:
    a, b = producer(), producer()
    consumer = ConsumerState(producers=2)
    consumer.receive(messages(a, a.close_topic("t"))[0])
    assert drain(consumer) == [NEED_MESSAGE]
    consumer.receive(messages(b, b.submit("t", 5))[0])
    consumer.receive(messages(b, b.close_topic("t"))[0])
    steps = drain(consumer)
    assert isinstance(steps[0], InlineObject)
    assert steps[-1] is STREAM_END


def test_expected_topics_must_all_end() -> None:
    a = producer()
    consumer = ConsumerState(topics=["t1", "t2"])
    consumer.receive(messages(a, a.close_topic("t1"))[0])
    assert drain(consumer) == [NEED_MESSAGE]
    consumer.receive(messages(a, a.close_topic("t2"))[0])
    assert drain(consumer) == [STREAM_END]


def test_signed_producer_to_verifying_consumer() -> None:
    state = producer(signing_key=b"k")
    consumer = ConsumerState(signing_key=b"k")
    consumer.receive(messages(state, state.submit("t", 42))[0])
    step = consumer.next_step()
    assert isinstance(step, InlineObject)
    assert SERIALIZER.loads(step.data) == 42


def test_max_batch_bytes_sends_a_batch_once_its_bytes_add_up() -> None:
    state = producer(batch_size=64, max_batch_bytes=1000)
    ready = [state.submit("t", b"x" * 300) for _ in range(8)]
    # 4 objects of ~300 serialized bytes reach 1000 bytes: a batch of 4.
    assert [r is not None for r in ready] == [False, False, False, True] * 2
    assert all(len(r.objects) == 4 for r in ready if r is not None)
    big = state.submit("t", b"y" * 5000)
    assert big is not None
    assert [o.obj for o in big.objects] == [b"y" * 5000]


def test_no_byte_limit_keeps_batches_whole() -> None:
    state = producer(batch_size=4, max_batch_bytes=None)
    ready = [state.submit("t", b"x" * 10_000_000) for _ in range(4)]
    assert [r is not None for r in ready] == [False, False, False, True]


def test_objects_are_serialized_when_accepted() -> None:
    state = producer(batch_size=2)
    obj = {"v": 1}
    assert state.submit("t", obj) is None
    obj["v"] = 2  # changed after send(): the message carries what was sent
    ready = state.submit("t", {"v": 3})
    assert ready is not None
    consumer = ConsumerState()
    consumer.receive(messages(state, ready)[0])
    steps = drain(consumer)
    assert [SERIALIZER.loads(s.data) for s in steps[:2]] == [{"v": 1}, {"v": 3}]
    with pytest.raises(SerializationError, match="cannot pickle function"):
        state.submit("t", lambda: None)  # unpicklable: this send() fails, nothing else
    assert state.flush("t") is None


@pytest.mark.parametrize("value", [0, -1, 1.5, "1"])
def test_bad_max_batch_bytes(value: Any) -> None:
    with pytest.raises(ValueError, match="max_batch_bytes"):
        producer(max_batch_bytes=value)
