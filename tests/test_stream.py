"""StreamProducer -> queue shim -> StreamConsumer, inline and through stores."""

from __future__ import annotations

import queue
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import ProxyResolveMissingKeyError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import TopicClosedError
from proxystore_stream.exceptions import UnknownConnectorError
from proxystore_stream.filters import MetadataFilter
from proxystore_stream.filters import SamplingFilter
from proxystore_stream.proxy import Proxy
from proxystore_stream.proxy import extract
from proxystore_stream.proxy import get_factory
from proxystore_stream.proxy import is_resolved
from proxystore_stream.serialize import MsgpackSerializer
from proxystore_stream.shims.queue import QueuePublisher
from proxystore_stream.shims.queue import QueueSubscriber
from proxystore_stream.store import FileConnector
from proxystore_stream.store import MemoryConnector
from proxystore_stream.store import Store


@pytest.fixture(params=["inline", "memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store[Any] | None]:
    if request.param == "inline":
        yield None
        return
    connector = MemoryConnector() if request.param == "memory" else FileConnector(tmp_path)
    made: Store[Any] = Store(f"test-{request.param}", connector)
    yield made
    made.close()


def pair(**producer_kwargs: Any) -> tuple[StreamProducer[Any], QueueSubscriber, queue.Queue[bytes]]:
    q: queue.Queue[bytes] = queue.Queue()
    return StreamProducer(QueuePublisher({"t": q}), **producer_kwargs), QueueSubscriber(q), q


def test_round_trip_in_order(store: Store[Any] | None) -> None:
    producer, subscriber, _ = pair(default_store=store)
    objects = [{"i": i, "data": bytes(range(i % 256)) * 10} for i in range(50)]
    for i, obj in enumerate(objects):
        producer.send("t", obj, metadata={"i": i})
    producer.close(topics=["t"])
    consumer: StreamConsumer[dict[str, Any]] = StreamConsumer(subscriber)
    received = list(consumer.iter_with_metadata())
    assert [m["i"] for m, _ in received] == list(range(50))
    assert [obj for _, obj in received] == objects
    assert all(isinstance(obj, Proxy) == (store is not None) for _, obj in received)
    if store is not None:
        # evict=True by default: resolving removed every object from the store.
        assert not any(store.exists(get_factory(obj).key) for _, obj in received)


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_batching_keeps_every_object_and_order(store: Store[Any] | None, batch_size: int) -> None:
    producer, subscriber, q = pair(default_store=store, batch_size=batch_size)
    for i in range(130):
        producer.send("t", i)
    producer.close(topics=["t"])
    # One message per full batch; the remainder shares a message with the end.
    assert q.qsize() == 130 // batch_size + 1
    assert list(StreamConsumer(subscriber).iter_objects()) == list(range(130))


def test_aggregation() -> None:
    producer, subscriber, _ = pair(batch_size=4, aggregator=lambda xs: sum(xs))
    for i in range(10):
        producer.send("t", i, metadata={f"m{i}": i})
    producer.close(topics=["t"])
    received = list(StreamConsumer(subscriber).iter_with_metadata())
    assert [obj for _, obj in received] == [0 + 1 + 2 + 3, 4 + 5 + 6 + 7, 8 + 9]
    assert received[0][0] == {"m0": 0, "m1": 1, "m2": 2, "m3": 3}


def test_producer_filter_and_sampling() -> None:
    producer, subscriber, _ = pair(filter_=MetadataFilter({"even": True}))
    for i in range(10):
        producer.send("t", i, metadata={"even": i % 2 == 0})
    producer.close(topics=["t"])
    assert list(StreamConsumer(subscriber)) == [0, 2, 4, 6, 8]
    producer, subscriber, _ = pair(filter_=SamplingFilter(1.0))
    producer.send("t", 1)
    producer.close(topics=["t"])
    assert list(StreamConsumer(subscriber)) == []


def test_consumer_filter_evicts_dropped_stored_objects(tmp_path: Path) -> None:
    store: Store[Any] = Store("s", FileConnector(tmp_path))
    producer, subscriber, _ = pair(default_store=store)
    for i in range(6):
        producer.send("t", i, metadata={"i": i}, evict=i < 3)
    producer.close(topics=["t"])
    consumer = StreamConsumer(subscriber, filter_=lambda m: m["i"] % 2 == 1)
    assert [extract(p) for p in consumer] == [0, 2, 4]
    # 1 was dropped and evicted; 3 and 5 were dropped but evict=False: they stay.
    # 4 was resolved but evict=False: stays too.
    remaining = sorted(store.get(path.name) for path in tmp_path.iterdir())
    assert remaining == [3, 4, 5]


def test_inline_threshold_sends_small_objects_inline(tmp_path: Path) -> None:
    store: Store[Any] = Store("s", FileConnector(tmp_path))
    producer, subscriber, _ = pair(default_store=store, inline_threshold=1024)
    producer.send("t", b"x" * 10)
    producer.send("t", b"y" * 4096)
    producer.close(topics=["t"])
    small, big = list(StreamConsumer(subscriber))
    assert not isinstance(small, Proxy)
    assert small == b"x" * 10
    assert isinstance(big, Proxy)
    assert big == b"y" * 4096


def test_per_topic_stores(tmp_path: Path) -> None:
    q1: queue.Queue[bytes] = queue.Queue()
    q2: queue.Queue[bytes] = queue.Queue()
    store: Store[Any] = Store("s", FileConnector(tmp_path))
    producer: StreamProducer[Any] = StreamProducer(
        QueuePublisher({"a": q1, "b": q2}),
        stores={"a": store, "b": None},
    )
    producer.send("a", [1])
    producer.send("b", [2])
    producer.close(topics=["a", "b"])
    (a,) = StreamConsumer(QueueSubscriber(q1))
    (b,) = StreamConsumer(QueueSubscriber(q2))
    assert isinstance(a, Proxy)
    assert a == [1]
    assert not isinstance(b, Proxy)
    assert b == [2]


def test_topic_closed_error_and_nothing_accepted_is_lost() -> None:
    producer, subscriber, _ = pair(batch_size=10)
    producer.send("t", 1)
    producer.send("t", 2)
    producer.close_topics("t")
    with pytest.raises(TopicClosedError, match="'t'"):
        producer.send("t", 3)
    producer.close()
    assert list(StreamConsumer(subscriber)) == [1, 2]


def test_close_flushes_partial_batches() -> None:
    producer, subscriber, _ = pair(batch_size=10)
    producer.send("t", 1)
    producer.close()
    assert StreamConsumer(subscriber).next(timeout=1) == 1


def test_next_variants_and_timeout(tmp_path: Path) -> None:
    store: Store[Any] = Store("s", FileConnector(tmp_path))
    producer, subscriber, _ = pair(default_store=store)
    for i in range(4):
        producer.send("t", {"i": i}, metadata={"i": i})
    consumer: StreamConsumer[Any] = StreamConsumer(subscriber)
    proxy = consumer.next()
    assert isinstance(proxy, Proxy)
    assert not is_resolved(proxy)
    metadata, proxy = consumer.next_with_metadata()
    assert metadata == {"i": 1}
    obj = consumer.next_object()
    assert type(obj) is dict
    assert obj == {"i": 2}
    metadata, obj = consumer.next_object_with_metadata()
    assert (metadata, obj) == ({"i": 3}, {"i": 3})
    with pytest.raises(StreamTimeoutError):
        consumer.next(timeout=0.05)
    with pytest.raises(TimeoutError):
        consumer.next(timeout=0.05)


def test_iteration_timeout() -> None:
    _, subscriber, _ = pair()
    consumer: StreamConsumer[Any] = StreamConsumer(subscriber, timeout=0.05)
    with pytest.raises(StreamTimeoutError):
        next(iter(consumer))


def test_evicted_proxy_fails_clearly_on_second_resolve(tmp_path: Path) -> None:
    store: Store[Any] = Store("s", FileConnector(tmp_path))
    producer, subscriber, _ = pair(default_store=store)
    producer.send("t", [1, 2, 3], evict=True)
    proxy = StreamConsumer(subscriber).next()
    twin = Proxy(get_factory(proxy))
    assert proxy == [1, 2, 3]
    with pytest.raises(ProxyResolveMissingKeyError, match="evicted") as info:
        len(twin)
    assert info.value.store_name == "s"
    assert isinstance(info.value, KeyError)


def test_malformed_message_names_topic_and_stream_goes_on() -> None:
    producer, subscriber, q = pair()
    q.put(b"garbage")
    producer.send("t", "after")
    consumer: StreamConsumer[Any] = StreamConsumer(subscriber, topics=["t"])
    with pytest.raises(MalformedMessageError, match="topic 't'"):
        consumer.next(timeout=1)
    assert consumer.next(timeout=1) == "after"


def test_skip_malformed_logs_and_continues(caplog: pytest.LogCaptureFixture) -> None:
    producer, subscriber, q = pair()
    q.put(b"garbage")
    producer.send("t", "after")
    consumer: StreamConsumer[Any] = StreamConsumer(subscriber, skip_malformed=True)
    assert consumer.next(timeout=1) == "after"
    assert "malformed" in caplog.text


def test_signed_stream_rejects_forgeries() -> None:
    producer, subscriber, q = pair(signing_key=b"k")
    forged = StreamProducer(QueuePublisher({"t": q}))
    forged.send("t", "forged")
    producer.send("t", "genuine")
    consumer: StreamConsumer[Any] = StreamConsumer(
        subscriber, signing_key=b"k", skip_malformed=True
    )
    assert consumer.next(timeout=1) == "genuine"


def test_consumer_refuses_serializers_it_does_not_accept() -> None:
    producer, subscriber, _ = pair()
    producer.send("t", {"plain": 1})
    consumer: StreamConsumer[Any] = StreamConsumer(subscriber, serializers=["msgpack"])
    with pytest.raises(MalformedMessageError, match="serializer 'pickle' is not accepted"):
        consumer.next(timeout=1)
    producer, subscriber, _ = pair(serializer=MsgpackSerializer())
    producer.send("t", {"plain": 1})
    assert StreamConsumer(subscriber, serializers=["msgpack"]).next(timeout=1) == {"plain": 1}


def test_unknown_connector_kind_in_a_message_is_refused() -> None:
    from proxystore_stream._core.envelope import encode_batch
    from proxystore_stream.events import EventBatch
    from proxystore_stream.events import NewObjectKeyEvent
    from proxystore_stream.events import StoreConfig

    _, subscriber, q = pair()
    evil = StoreConfig("s", "os.system", {"cmd": "rm -rf /"})
    q.put(encode_batch(EventBatch("t", (NewObjectKeyEvent("k", evil, True, {}),))))
    with pytest.raises(UnknownConnectorError, match=r"'os\.system'"):
        StreamConsumer(subscriber).next(timeout=1)


def test_context_managers_close_endpoints() -> None:
    q: queue.Queue[bytes] = queue.Queue()
    subscriber = QueueSubscriber(q)
    with StreamProducer(QueuePublisher({"t": q})) as producer:
        producer.send("t", 1)
    with StreamConsumer(subscriber) as consumer:
        assert consumer.next(timeout=1) == 1
    assert list(subscriber) == []


def test_bad_arguments_give_clear_errors() -> None:
    with pytest.raises(TypeError, match="publisher"):
        StreamProducer(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Store"):
        StreamProducer(QueuePublisher({}), default_store="s")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable of topic names"):
        StreamProducer(QueuePublisher({})).close(topics="t")
    with pytest.raises(TypeError, match="topic must be a str"):
        StreamProducer(QueuePublisher({})).send(3, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="No queue for topic"):
        StreamProducer(QueuePublisher({})).send("nope", 1)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_event_ids_are_unique_and_survive_redelivery(
    store: Store[Any] | None, batch_size: int
) -> None:
    producer, subscriber, q = pair(default_store=store, batch_size=batch_size)
    for i in range(7):
        producer.send("t", i, evict=False)
    producer.close(topics=["t"])
    messages = []
    while not q.empty():
        messages.append(q.get_nowait())
    # The broker delivers every message twice, as after a crash before the ack.
    for message in messages[:-1] + messages:
        q.put(message)
    consumer: StreamConsumer[int] = StreamConsumer(subscriber)
    assert consumer.last_event_id is None
    seen: dict[str, int] = {}
    duplicates = 0
    for obj in consumer:
        event_id = consumer.last_event_id
        assert event_id is not None
        assert consumer.last_topic == "t"
        if event_id in seen:
            duplicates += 1
            assert seen[event_id] == obj
            continue
        seen[event_id] = obj
    assert sorted(seen.values()) == list(range(7))
    assert all(i.startswith(producer.producer_id + ":") for i in seen)
    # Every object but those sharing the last message (the end of stream) came twice.
    assert duplicates == {1: 7, 3: 6}[batch_size]


def test_the_consumer_keeps_no_reference_to_an_object_it_returned() -> None:
    # Only `last_event_id` outlives a delivery: holding the data too kept a
    # large object's memory in use until the next one arrived.
    producer, subscriber, _ = pair()
    producer.send("t", b"x" * (1 << 20))
    producer.send("t", bytearray(b"y" * 1000))  # pickled
    producer.flush()
    consumer: StreamConsumer[Any] = StreamConsumer(subscriber, timeout=5)
    for expected in (b"x" * (1 << 20), bytearray(b"y" * 1000)):
        obj = consumer.next()
        assert obj == expected
        assert sys.getrefcount(obj) == 2  # `obj` and getrefcount's argument
        assert consumer.last_event_id is not None
