"""Bad input from the wire and from callers: only our own errors, never a crash or a hang.

What tests/core/test_envelope.py, tests/test_stream.py and tests/test_proxy.py
already cover is not repeated here; this file adds:

- a seeded mutation fuzz (20,000 byte strings derived from real envelopes:
  bit flips, byte changes, truncation, extension, insertion, deletion,
  duplication, and msgpack-valid-but-wrong-shape bodies, also re-signed)
  through the decoder, each decode timed;
- the same mutants through `StreamConsumer` on the queue shim, each followed
  by a good message that must be delivered next;
- hypothesis properties on wrong-shape bodies, signed-envelope tampering and
  random bytes in a stream;
- signed streams: tampered or unsigned envelopes are refused before their
  payload is deserialized, logged, and the stream goes on (sync and async);
- oversized messages (queue shim: no limit; RabbitMQ: `max_message_size`
  through a `StreamProducer`, and the store as the way around it);
- wrong types to `StreamProducer.send` and to the in-process publishers;
- keys evicted before their proxy resolves (memory and file stores, sync and async).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from proxystore_stream import AsyncStreamConsumer
from proxystore_stream import AsyncStreamProducer
from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer
from proxystore_stream._core.consumer_state import ConsumerState
from proxystore_stream._core.consumer_state import InlineObject
from proxystore_stream._core.detached import attach
from proxystore_stream._core.envelope import INLINE
from proxystore_stream._core.envelope import decode_batch
from proxystore_stream._core.envelope import decode_wire
from proxystore_stream.events import EventBatch
from proxystore_stream.events import NewObjectKeyEvent
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import MessageAuthenticationError
from proxystore_stream.exceptions import ProxyResolveMissingKeyError
from proxystore_stream.exceptions import StreamError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.proxy import Proxy
from proxystore_stream.proxy import get_factory
from proxystore_stream.proxy import is_resolved
from proxystore_stream.serialize import MsgpackSerializer
from proxystore_stream.shims.local import AsyncLocalPublisher
from proxystore_stream.shims.local import LocalBroker
from proxystore_stream.shims.local import LocalPublisher
from proxystore_stream.shims.queue import AsyncQueuePublisher
from proxystore_stream.shims.queue import AsyncQueueSubscriber
from proxystore_stream.shims.queue import QueuePublisher
from proxystore_stream.shims.queue import QueueSubscriber
from proxystore_stream.store import FileConnector
from proxystore_stream.store import MemoryConnector
from proxystore_stream.store import Store
from tests.conftest import require_broker
from tests.shims.detached_cases import DetachedCapture

KEY = b"k" * 32
FUZZ_CASES = 20_000
CONSUMER_FUZZ_CASES = 2_000
SLOWEST_DECODE = 0.5  # seconds; a decode of a few hundred bytes takes microseconds
FUZZ_SECONDS = 120.0  # the whole fuzz, run in a thread so a hang fails instead of blocking


def capture(make: Callable[[StreamProducer[Any]], None], **kwargs: Any) -> list[bytes]:
    """The messages a StreamProducer sends for `make`, captured from a queue."""
    q: queue.Queue[bytes] = queue.Queue()
    producer: StreamProducer[Any] = StreamProducer(QueuePublisher({"t": q}), **kwargs)
    make(producer)
    producer.close(publisher=False)
    return [q.get_nowait() for _ in range(q.qsize())]


def seed_envelopes(tmp_path: Path, *, signing_key: bytes | None = None) -> list[bytes]:
    """Real envelopes of every event kind: inline, batched, by key, end of stream."""
    store: Store[Any] = Store("fuzz", FileConnector(tmp_path / "store"))
    msgpack_ = MsgpackSerializer()
    seeds = capture(
        lambda p: p.send("t", {"i": 1, "tags": ["a", "b"]}, metadata={"i": 1, "x": [1.5, None]}),
        serializer=msgpack_,
        signing_key=signing_key,
    )
    seeds += capture(
        lambda p: [p.send("t", i, metadata={"i": i}) for i in range(3)],
        serializer=msgpack_,
        batch_size=3,
        signing_key=signing_key,
    )
    seeds += capture(
        lambda p: p.send("t", b"stored bytes", metadata={"k": True}),
        default_store=store,
        signing_key=signing_key,
    )
    seeds += capture(lambda p: p.close_topics("t"), signing_key=signing_key)
    seeds += capture(lambda p: p.send("t", "pickled str"), signing_key=signing_key)
    return seeds


# --- mutators ------------------------------------------------------------------

ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    2**64 - 1,
    -(2**63),
    1.5,
    float("nan"),
    "",
    "t",
    "x" * 300,
    b"",
    b"\x00" * 40,
    [],
    [[]],
    [0],
    [1, "k", 0, True, {}],
    [2],
    {},
    {"a": []},
    {"": {"": {}}},
    ["t", "p", 0, "msgpack", [], []],
]


def _flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _set_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.choice([0x00, 0xFF, 0xC1, 0xDD, 0xDF, 0x7F, 0x90, 0x80])
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def _extend(rng: random.Random, data: bytes) -> bytes:
    return data + rng.randbytes(rng.randint(1, 64))


def _insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 16) :]


def _duplicate(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    chunk = data[at : at + rng.randint(1, 32)]
    return data[:at] + chunk * rng.randint(2, 5) + data[at:]


def _reshape_value(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """Replace, drop or add one element somewhere in a decoded msgpack body."""
    if isinstance(value, list) and value and depth < 4 and rng.random() < 0.7:
        out = list(value)
        i = rng.randrange(len(out))
        choice = rng.random()
        if choice < 0.6:
            out[i] = _reshape_value(rng, out[i], depth + 1)
        elif choice < 0.8:
            del out[i]
        else:
            out.insert(i, rng.choice(ODD_VALUES))
        return out
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.7:
        out_map = dict(value)
        key = rng.choice(list(out_map))
        out_map[key] = _reshape_value(rng, out_map[key], depth + 1)
        return out_map
    return rng.choice(ODD_VALUES)


def _wrong_shape(rng: random.Random, data: bytes, signing_key: bytes | None) -> bytes:
    """A msgpack-valid body of the wrong shape, signed again when the seed was signed."""
    signed = data[3] == 2
    body = data[4 + 32 :] if signed else data[4:]
    value = msgpack.unpackb(body, raw=False, strict_map_key=False)
    packed = msgpack.packb(_reshape_value(rng, value), use_bin_type=True)
    if signed and signing_key is not None and rng.random() < 0.8:
        import hashlib
        import hmac

        # Authenticated yet malformed: the shape checks after the HMAC must hold too.
        return b"PSS\x02" + hmac.digest(signing_key, packed, hashlib.sha256) + packed
    return (b"PSS\x02" + data[4:36] if signed else b"PSS\x01") + packed


BYTE_MUTATORS = [_flip_bits, _set_bytes, _truncate, _extend, _insert, _delete, _duplicate]


def mutants(seeds: list[bytes], count: int, *, seed: int, key: bytes | None) -> list[bytes]:
    """`count` mutants of `seeds`: one in four reshaped, the rest byte-mutated."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = rng.choice(seeds)
        if rng.random() < 0.25:
            out.append(_wrong_shape(rng, data, key))
            continue
        for _ in range(rng.randint(1, 3)):
            data = rng.choice(BYTE_MUTATORS)(rng, data) or b"P"
        out.append(data)
    return out


def in_thread(work: Callable[[], None], seconds: float) -> None:
    """Run `work` in a thread; fail if it hangs or raises."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s (a hang)"
    if errors:
        raise errors[0]


# --- the decoder -----------------------------------------------------------------


@pytest.mark.parametrize("signing_key", [None, KEY], ids=["unsigned", "signed"])
def test_mutation_fuzz_of_the_decoder(tmp_path: Path, signing_key: bytes | None) -> None:
    seeds = seed_envelopes(tmp_path, signing_key=signing_key)
    cases = mutants(seeds, FUZZ_CASES // 2, seed=5 if signing_key else 4, key=signing_key)
    outcomes: dict[str, int] = {}
    unexpected: list[tuple[str, bytes]] = []
    slowest = 0.0

    def fuzz() -> None:
        nonlocal slowest
        for data in cases:
            for decode in (decode_wire, decode_batch):
                start = time.perf_counter()
                try:
                    result = decode(data, topic="t", signing_key=signing_key)
                    kind = "decoded"
                    if decode is decode_batch:
                        assert isinstance(result, EventBatch)
                except MessageAuthenticationError:
                    kind = "unauthenticated"
                except MalformedMessageError as exc:
                    kind = "malformed" if exc.topic == "t" else "malformed, topic lost"
                except Exception as exc:  # anything else is a bug
                    unexpected.append((repr(exc), data))
                    kind = "unexpected"
                slowest = max(slowest, time.perf_counter() - start)
                outcomes[kind] = outcomes.get(kind, 0) + 1

    in_thread(fuzz, FUZZ_SECONDS)
    assert unexpected == [], unexpected[:5]
    assert sum(outcomes.values()) == FUZZ_CASES
    assert "malformed, topic lost" not in outcomes, "every error names the topic"
    assert slowest < SLOWEST_DECODE
    # The fuzz reaches every outcome: it is not rejecting everything at the magic bytes.
    assert outcomes.get("malformed", 0) > FUZZ_CASES // 20
    assert outcomes.get("decoded", 0) > 0
    if signing_key is not None:
        assert outcomes.get("unauthenticated", 0) > FUZZ_CASES // 4


def test_the_consumers_fast_path_agrees_with_the_full_decoder(tmp_path: Path) -> None:
    """`ConsumerState.take` accepts and refuses exactly what `decode_wire` does.

    `take` checks one-inline-object messages with its own combined check;
    on every mutant it must agree with the full decoder, and hand over the
    same event.
    """
    cases = mutants(seed_envelopes(tmp_path), FUZZ_CASES // 4, seed=7, key=None)
    outcomes: dict[str, int] = {}
    for data in cases:
        try:
            wire = decode_wire(data, topic="t")
        except MalformedMessageError:
            wire = None
        state = ConsumerState(source="t")
        try:
            step = state.take(data)
        except MalformedMessageError as exc:
            assert wire is None, f"take refused what decode_wire accepts: {data!r}"
            kind = "refused" if exc.topic == "t" else "refused, topic lost"
            outcomes[kind] = outcomes.get(kind, 0) + 1
            continue
        assert wire is not None, f"take accepted what decode_wire refuses: {data!r}"
        first = wire.events[0] if wire.events else None
        if len(wire.events) == 1 and first is not None and first[0] == INLINE:
            assert step == InlineObject(
                wire.topic, first[1], wire.serializer, first[2], wire.producer_id, wire.seq, 0
            )
            outcomes["one inline"] = outcomes.get("one inline", 0) + 1
        else:
            outcomes["other"] = outcomes.get("other", 0) + 1
    assert sum(outcomes.values()) == FUZZ_CASES // 4
    assert "refused, topic lost" not in outcomes
    assert outcomes.get("refused", 0) > FUZZ_CASES // 40
    assert outcomes.get("one inline", 0) > 0
    assert outcomes.get("other", 0) > 0


def detached_seeds() -> list[tuple[bytes, list[Any]]]:
    """Real detached messages: raw bytes and pickles, with and without metadata."""
    capture = DetachedCapture()
    producer: StreamProducer[Any] = StreamProducer(capture)
    for obj, metadata in [
        (b"first", None),
        (b"raw bytes", None),
        (b"raw with metadata", {"i": 1, "x": [1.5, None]}),
        (bytearray(b"out of band"), None),
        ({"k": "pickled"}, {"j": "v"}),
    ]:
        producer.send("t", obj, metadata=metadata)
    return [(message, frames) for message, frames in capture.sent]


def test_detached_messages_decode_as_their_joined_envelopes() -> None:
    """`take_detached(message, frames)` agrees with `take(attach(message, frames))`.

    On mutants of real detached envelopes (and frames), both refuse or both
    hand over the same object.
    """
    seeds = detached_seeds()
    assert len(seeds) == 5
    envelopes = [message for message, _ in seeds]
    cases = envelopes + mutants(envelopes, FUZZ_CASES // 8, seed=9, key=None)
    rng = random.Random(9)
    outcomes: dict[str, int] = {}
    topics: set[str | None] = set()
    for data in cases:
        frames = rng.choice(seeds)[1]
        if rng.random() < 0.1:
            frames = rng.choice([[], [b""], [b"a", b"b"], frames * 2])
        try:
            detached = ConsumerState(source="t").take_detached(data, frames)
        except MalformedMessageError as exc:
            topics.add(exc.topic)
            detached = None
        try:
            joined = ConsumerState(source="t").take(attach(data, frames, topic="t"))
        except MalformedMessageError:
            joined = None
        assert repr(detached) == repr(joined), data  # repr: NaN in metadata equals itself
        kind = "refused" if detached is None else "one inline"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes.get("refused", 0) > FUZZ_CASES // 80
    assert outcomes.get("one inline", 0) > len(envelopes)  # mutants accepted too
    assert topics == {"t"}  # every refusal names the topic


# --- through a consumer ----------------------------------------------------------


def test_mutants_through_a_consumer_each_followed_by_a_good_message(tmp_path: Path) -> None:
    seeds = seed_envelopes(tmp_path)
    cases = mutants(seeds, CONSUMER_FUZZ_CASES, seed=6, key=None)
    q: queue.Queue[bytes] = queue.Queue()
    subscriber = QueueSubscriber(q)
    producer: StreamProducer[Any] = StreamProducer(
        QueuePublisher({"t": q}), serializer=MsgpackSerializer()
    )
    counts = {"good": 0, "mutant delivered": 0, "stream ended": 0, "raised": 0}
    unexpected: list[tuple[str, bytes]] = []

    def fuzz() -> None:
        for i, data in enumerate(cases):
            q.put(data)
            good = {"good": i}
            producer.send("t", good)
            consumer = new_consumer(subscriber)
            for _ in range(6):  # the mutant (possibly several events), then the good one
                try:
                    obj = consumer.next(timeout=5)
                except StopIteration:  # a mutant that decodes as end of stream
                    counts["stream ended"] += 1
                    consumer = new_consumer(subscriber)
                    continue
                except StreamTimeoutError:
                    unexpected.append(("good message not delivered", data))
                    break
                except StreamError:
                    counts["raised"] += 1  # e.g. an unknown connector kind; the stream goes on
                    continue
                except Exception as exc:
                    unexpected.append((repr(exc), data))
                    break
                if type(obj) is dict and obj == good:
                    counts["good"] += 1
                    break
                # Never resolve a mutant's proxy: its store config is made up.
                assert not isinstance(obj, Proxy) or not is_resolved(obj)
                counts["mutant delivered"] += 1
            assert q.empty(), f"case {i} left messages behind"

    in_thread(fuzz, FUZZ_SECONDS)
    assert unexpected == [], unexpected[:5]
    assert counts["good"] == CONSUMER_FUZZ_CASES
    # The seeded run reaches every branch: mutants that decode and are handed
    # over, that end the stream, and that raise one of our errors.
    assert counts["mutant delivered"] > 0
    assert counts["stream ended"] > 0
    assert counts["raised"] > 0


def new_consumer(subscriber: QueueSubscriber) -> StreamConsumer[Any]:
    return StreamConsumer(
        subscriber,
        topics=["t"],
        skip_malformed=True,
        serializers=["msgpack"],
    )


@settings(max_examples=300, deadline=1000)
@given(data=st.binary(max_size=300))
def test_random_bytes_in_a_stream_are_skipped(data: bytes) -> None:
    q: queue.Queue[bytes] = queue.Queue()
    q.put(data)
    StreamProducer(QueuePublisher({"t": q})).send("t", "after")
    consumer: StreamConsumer[Any] = StreamConsumer(QueueSubscriber(q), skip_malformed=True)
    assert consumer.next(timeout=1) == "after"
    assert q.empty()


# --- hypothesis: shapes and signatures ---------------------------------------------

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)
event = st.one_of(
    st.tuples(st.just(0), plain, plain),
    st.tuples(st.just(1), plain, plain, plain, plain),
    st.tuples(st.just(2)),
    st.lists(plain, max_size=6),
).map(list)
body = st.one_of(
    plain,
    st.tuples(plain, plain, plain, plain, plain, plain).map(list),
    st.tuples(
        st.text(max_size=4),
        st.text(max_size=4),
        st.integers(-5, 2**64 - 1),
        st.sampled_from(["pickle", "msgpack", "raw", ""]),
        st.lists(st.lists(plain, max_size=5), max_size=3),
        st.lists(event, max_size=5),
    ).map(list),
)


@settings(max_examples=300, deadline=1000)
@given(value=body)
def test_msgpack_valid_bodies_of_any_shape_are_decoded_or_refused(value: Any) -> None:
    data = b"PSS\x01" + msgpack.packb(value, use_bin_type=True)
    try:
        batch = decode_batch(data, topic="t")
    except MalformedMessageError as exc:
        topic = exc.topic
    else:
        assert isinstance(batch, EventBatch)
        return
    assert topic == "t"


@settings(max_examples=300, deadline=1000)
@given(position=st.integers(min_value=0), delta=st.integers(1, 255))
def test_any_change_to_a_signed_envelope_is_refused(position: int, delta: int) -> None:
    (data,) = capture(lambda p: p.send("t", {"x": 1}), signing_key=KEY)
    tampered = bytearray(data)
    position %= len(data)
    tampered[position] = (tampered[position] + delta) % 256
    expected = MessageAuthenticationError if position >= 4 else MalformedMessageError
    with pytest.raises(expected):
        decode_wire(bytes(tampered), signing_key=KEY)


# --- signed streams ------------------------------------------------------------------

DETONATED: list[str] = []


def _detonate(note: str) -> str:
    DETONATED.append(note)
    return note


class Bomb:
    """Records it was unpickled: a payload that must never be deserialized."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_detonate, ("unpickled",))


def forged_messages() -> list[bytes]:
    """An unsigned bomb, a bomb under a wrong key, and a signed bomb with one byte changed."""
    unsigned = capture(lambda p: p.send("t", Bomb()))
    wrong_key = capture(lambda p: p.send("t", Bomb()), signing_key=b"not the key")
    (signed,) = capture(lambda p: p.send("t", Bomb()), signing_key=KEY)
    tampered = bytearray(signed)
    tampered[-2] ^= 0x01
    return [*unsigned, *wrong_key, bytes(tampered)]


def test_signed_stream_refuses_forgeries_before_unpickling_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    DETONATED.clear()
    q: queue.Queue[bytes] = queue.Queue()
    for forged in forged_messages():
        q.put(forged)
    producer: StreamProducer[Any] = StreamProducer(QueuePublisher({"t": q}), signing_key=KEY)
    producer.send("t", "genuine")
    producer.close(topics=["t"])
    consumer: StreamConsumer[Any] = StreamConsumer(
        QueueSubscriber(q), signing_key=KEY, skip_malformed=True
    )
    with caplog.at_level(logging.WARNING, logger="proxystore_stream.consumer"):
        assert list(consumer) == ["genuine"]
    assert DETONATED == [], "a forged payload was deserialized"
    refused = [r for r in caplog.records if r.exc_info and r.exc_info[0]]
    assert [r.exc_info[0] for r in refused] == [MessageAuthenticationError] * 3  # type: ignore[index]
    assert all("malformed" in r.getMessage() for r in refused)


def test_signed_stream_without_skip_raises_each_forgery_then_delivers() -> None:
    DETONATED.clear()
    q: queue.Queue[bytes] = queue.Queue()
    for forged in forged_messages():
        q.put(forged)
    StreamProducer(QueuePublisher({"t": q}), signing_key=KEY).send("t", "genuine")
    consumer: StreamConsumer[Any] = StreamConsumer(QueueSubscriber(q), signing_key=KEY)
    for _ in range(3):
        with pytest.raises(MessageAuthenticationError) as info:
            consumer.next(timeout=1)
        assert info.value.topic is None or info.value.topic == "t"
    assert consumer.next(timeout=1) == "genuine"
    assert DETONATED == []
    # Control: without signing, the same payload is unpickled (the bomb works).
    q.put(forged_messages()[0])
    assert StreamConsumer(QueueSubscriber(q)).next(timeout=1) == "unpickled"
    assert DETONATED == ["unpickled"]


def test_async_signed_stream_skips_forgeries() -> None:
    DETONATED.clear()

    async def main() -> list[Any]:
        q: queue.Queue[bytes] = queue.Queue()
        for forged in forged_messages():
            q.put(forged)
        producer: AsyncStreamProducer[Any] = AsyncStreamProducer(
            AsyncQueuePublisher({"t": q}), signing_key=KEY
        )
        await producer.send("t", "genuine")
        await producer.close(topics=["t"])
        consumer: AsyncStreamConsumer[Any] = AsyncStreamConsumer(
            AsyncQueueSubscriber(q), signing_key=KEY, skip_malformed=True
        )
        return [item async for item in consumer]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == ["genuine"]
    assert DETONATED == []


# --- oversized messages ----------------------------------------------------------------


def test_queue_shim_has_no_size_limit() -> None:
    q: queue.Queue[bytes] = queue.Queue()
    big = os.urandom(1024) * (32 * 1024)  # 32 MiB, inline in one message
    producer: StreamProducer[bytes] = StreamProducer(QueuePublisher({"t": q}))
    producer.send("t", big)
    assert StreamConsumer(QueueSubscriber(q)).next(timeout=10) == big


def test_rabbitmq_max_message_size_through_a_producer_and_the_store_way_around(
    tmp_path: Path,
) -> None:
    require_broker("RabbitMQ", "127.0.0.1", 5672)
    from proxystore_stream.shims.rabbitmq import RabbitMQPublisher
    from proxystore_stream.shims.rabbitmq import RabbitMQSubscriber

    url = os.environ.get("PSS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    topic = f"pss-test-{uuid.uuid4().hex[:12]}"
    options: dict[str, Any] = {"mode": "queue", "queue_arguments": {"x-expires": 60_000}}
    limit = 64 * 1024
    big = b"x" * (2 * limit)
    with (
        RabbitMQPublisher(url=url, max_message_size=limit, **options) as publisher,
        RabbitMQSubscriber(topic, url=url, **options) as subscriber,
    ):
        inline: StreamProducer[bytes] = StreamProducer(publisher)
        with pytest.raises(ValueError, match="max_message_size"):
            inline.send(topic, big)
        inline.send(topic, b"small")  # the producer is still usable
        inline.flush()
        stored: StreamProducer[bytes] = StreamProducer(
            publisher, default_store=Store("big", FileConnector(tmp_path))
        )
        stored.send(topic, big)  # only the key crosses the broker
        stored.flush()
        consumer: StreamConsumer[bytes] = StreamConsumer(subscriber)
        assert consumer.next_object(timeout=15) == b"small"
        assert consumer.next_object(timeout=15) == big
        with pytest.raises(StreamTimeoutError):
            consumer.next(timeout=0.5)
        subscriber.ack()
    assert list(tmp_path.iterdir()) == []


# --- wrong types from callers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ([("i", 1)], "dict with str keys"),
        ({1: "x"}, "dict with str keys"),
        ({"x": object()}, "plain data"),
        ({"x": {1, 2}}, "plain data"),
    ],
)
def test_bad_metadata_fails_only_its_own_send(metadata: Any, match: str) -> None:
    q: queue.Queue[bytes] = queue.Queue()
    producer: StreamProducer[int] = StreamProducer(QueuePublisher({"t": q}), batch_size=3)
    producer.send("t", 1, metadata={"i": 1})
    with pytest.raises(TypeError, match=match):
        producer.send("t", 2, metadata=metadata)
    producer.send("t", 3, metadata={"i": 3})
    producer.close(topics=["t"])
    consumer: StreamConsumer[int] = StreamConsumer(QueueSubscriber(q))
    assert list(consumer.iter_with_metadata()) == [({"i": 1}, 1), ({"i": 3}, 3)]


@pytest.mark.parametrize("topic", [b"t", 3, None, ("t",)])
def test_producer_refuses_a_topic_that_is_not_a_str(topic: Any) -> None:
    q: queue.Queue[bytes] = queue.Queue()
    producer: StreamProducer[int] = StreamProducer(QueuePublisher({"t": q}))
    with pytest.raises(TypeError, match="topic"):
        producer.send(topic, 1)
    assert q.empty()


def _queue_publisher(q: Any) -> Any:
    return QueuePublisher({"t": q})


def _async_queue_publisher(q: Any) -> Any:
    return AsyncQueuePublisher({"t": q})


@pytest.mark.parametrize(
    "make",
    [
        _queue_publisher,
        _async_queue_publisher,
        lambda _: LocalPublisher(LocalBroker()),
        lambda _: AsyncLocalPublisher(LocalBroker()),
    ],
    ids=["queue", "async-queue", "local", "async-local"],
)
@pytest.mark.parametrize(
    ("topic", "message", "name"),
    [("t", "text", "message"), ("t", None, "message"), ("t", 7, "message"), (b"t", b"x", "topic")],
)
def test_in_process_publishers_refuse_non_bytes(
    make: Callable[[Any], Any], topic: Any, message: Any, name: str
) -> None:
    q: queue.Queue[bytes] = queue.Queue()
    publisher = make(q)
    with pytest.raises(TypeError, match=name):
        send_now(publisher, topic, message)
    assert q.empty()


def send_now(publisher: Any, topic: Any, message: Any) -> None:
    """Call a sync or async publisher's send and wait for it."""
    result = publisher.send(topic, message)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


@pytest.mark.parametrize("wrap", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_queue_publisher_copies_mutable_buffers(wrap: Callable[[bytes], Any]) -> None:
    q: queue.Queue[bytes] = queue.Queue()
    data = bytearray(b"abc")
    QueuePublisher({"t": q}).send("t", wrap(data))
    data[0:1] = b"z"
    assert q.get_nowait() == b"abc"


# --- evicted keys --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_object_evicted_before_its_proxy_resolves(tmp_path: Path, kind: str) -> None:
    connector = MemoryConnector() if kind == "memory" else FileConnector(tmp_path)
    store: Store[Any] = Store(f"evict-{kind}", connector)
    q: queue.Queue[bytes] = queue.Queue()
    producer: StreamProducer[Any] = StreamProducer(QueuePublisher({"t": q}), default_store=store)
    producer.send("t", ["first"])
    producer.send("t", ["second"])
    consumer: StreamConsumer[Any] = StreamConsumer(QueueSubscriber(q))
    proxy = consumer.next(timeout=1)
    key = get_factory(proxy).key
    store.evict(key)  # someone else evicted it first
    with pytest.raises(ProxyResolveMissingKeyError) as info:
        len(proxy)
    assert info.value.key == key
    assert info.value.store_name == f"evict-{kind}"
    assert isinstance(info.value, KeyError)
    assert consumer.next_object(timeout=1) == ["second"]  # the stream goes on


def test_async_next_object_of_an_evicted_key(tmp_path: Path) -> None:
    store: Store[Any] = Store("evict-async", FileConnector(tmp_path))

    async def main() -> None:
        q: queue.Queue[bytes] = queue.Queue()
        producer: AsyncStreamProducer[Any] = AsyncStreamProducer(
            AsyncQueuePublisher({"t": q}), default_store=store
        )
        await producer.send("t", "gone")
        await producer.send("t", "kept")
        (event,) = decode_batch(q.queue[0]).events  # peek at the first message's key
        assert isinstance(event, NewObjectKeyEvent)
        store.evict(event.key)  # someone else evicted it first
        consumer: AsyncStreamConsumer[Any] = AsyncStreamConsumer(AsyncQueueSubscriber(q))
        with pytest.raises(ProxyResolveMissingKeyError, match="evicted"):
            await consumer.next_object(timeout=1)
        assert await consumer.next_object(timeout=1) == "kept"

    asyncio.run(asyncio.wait_for(main(), 30))
