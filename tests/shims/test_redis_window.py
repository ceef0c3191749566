"""`ReplyWindow`: what both pipelining Redis publishers keep about pending messages (no I/O)."""

from __future__ import annotations

import pytest

from proxystore_stream.exceptions import BufferFullError

redis = pytest.importorskip("redis")

from proxystore_stream.shims.redis._window import TAKE_REPLY  # noqa: E402
from proxystore_stream.shims.redis._window import WRITE  # noqa: E402
from proxystore_stream.shims.redis._window import Pending  # noqa: E402
from proxystore_stream.shims.redis._window import ReplyWindow  # noqa: E402
from proxystore_stream.shims.redis._window import keepable  # noqa: E402


def pending(topic: str, size: int) -> Pending:
    return Pending(topic, [b"cmd-" + topic.encode()], size)


def test_full_by_count_or_by_bytes() -> None:
    window = ReplyWindow(messages=3, nbytes=100)
    assert not window.full_for(1_000)  # nothing pending: a large one goes alone
    for topic in "abc":
        window.accept(pending(topic, 10))
    assert window.full_for(1)  # three messages
    window.acknowledge()
    assert not window.full_for(70)  # 20 + 70 <= 100
    assert window.full_for(81)  # 20 + 81 > 100
    assert window.pending_bytes == 20
    assert [item.topic for item in window.pending] == ["b", "c"]


def test_accepted_messages_are_written_again_in_order() -> None:
    window = ReplyWindow()
    items = [pending(topic, 1) for topic in "xyz"]
    for item in items:
        window.accept(item)
    assert all(item.accepted for item in items)
    window.acknowledge()
    assert window.commands() == [b"cmd-y", b"cmd-z"]
    assert window.drop() == 2
    assert (window.commands(), window.pending_bytes) == ([], 0)


def test_settles_only_from_its_threshold() -> None:
    assert not ReplyWindow().settles(1 << 30)
    window = ReplyWindow(settle_from=64)
    assert (window.settles(63), window.settles(64)) == (False, True)


def test_the_first_error_reply_is_raised_once_naming_its_topic_and_the_count() -> None:
    window = ReplyWindow()
    for topic in ("full", "other", "third"):
        window.accept(pending(topic, 1))
    window.acknowledge(redis.exceptions.OutOfMemoryError("command not allowed ... maxmemory"))
    window.acknowledge()
    window.acknowledge(redis.exceptions.OutOfMemoryError("again"))
    assert window.failed
    with pytest.raises(BufferFullError, match=r"maxmemory.*topic 'full'; 2 messages got an error"):
        window.raise_failed(broker="redis://127.0.0.1:6379/0", key_type="list")
    assert not window.failed
    window.raise_failed(broker="redis://127.0.0.1:6379/0", key_type="list")  # nothing left


def test_a_wrongtype_reply_becomes_a_value_error_naming_the_topic() -> None:
    window = ReplyWindow()
    window.accept(pending("taken", 1))
    window.acknowledge(redis.ResponseError("WRONGTYPE Operation against a key ..."))
    with pytest.raises(ValueError, match=r"topic 'taken': a Redis key of another type"):
        window.raise_failed(broker="redis://127.0.0.1:6379/0", key_type="list")


def test_keepable_copies_only_what_can_change() -> None:
    frozen = b"abc"
    assert keepable(frozen) is frozen
    view = memoryview(frozen)
    assert keepable(view) is view
    buffer = bytearray(b"abc")
    kept = keepable(buffer)
    buffer[0] = ord("z")
    assert (type(kept), kept) == (bytes, b"abc")


def test_send_steps_make_room_write_and_settle() -> None:
    window = ReplyWindow(messages=2, settle_from=100)
    small = pending("small", 10)
    assert list(window.send_steps(small)) == [WRITE]  # the caller would write it...
    window.accept(small)  # ...and its write accepts it
    assert list(window.send_steps(small)) == []  # accepted: a retry has nothing left to do
    window.accept(pending("other", 10))
    # Full: the caller takes a reply (here, acknowledged), then writes.
    steps = window.send_steps(pending("third", 10))
    assert next(steps) == TAKE_REPLY
    window.acknowledge()
    assert list(steps) == [WRITE]
    # A large message settles: after its write, replies until none is pending.
    large = pending("large", 100)
    steps = window.send_steps(large)
    assert next(steps) == WRITE
    window.accept(large)
    taken = 0
    for step in steps:
        assert step == TAKE_REPLY
        window.acknowledge()
        taken += 1
    assert (taken, len(window.pending)) == (2, 0)


def test_no_write_while_an_error_reply_waits_to_be_raised() -> None:
    window = ReplyWindow()
    window.accept(pending("refused", 1))
    window.acknowledge(redis.ResponseError("WRONGTYPE Operation against a key ..."))
    assert list(window.send_steps(pending("next", 1))) == []


def test_give_up_drops_and_says_how_many() -> None:
    window = ReplyWindow()
    for topic in "ab":
        window.accept(pending(topic, 1))
    exc = RuntimeError("gave up after 3 attempts")
    window.give_up(exc)
    assert exc.args == ("gave up after 3 attempts; 2 unacknowledged message(s) dropped",)
    assert (len(window.pending), window.pending_bytes) == (0, 0)
    quiet = RuntimeError("gave up")
    window.give_up(quiet)
    assert quiet.args == ("gave up",)
