"""The messages a pipelining Redis publisher has written and not yet seen acknowledged (no I/O).

`CommandPublisher` and `AsyncCommandPublisher` write a command and return
before its reply. Both keep what this module tracks, in order: the
messages awaiting a reply (to write again on a new connection), how much
they weigh against the window, and the first error reply not raised yet.
The I/O (reading replies, writing, reconnecting) is each twin's own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any
from typing import Literal

from proxystore_stream.shims._errors import map_errors
from proxystore_stream.shims.redis._common import ERRORS
from proxystore_stream.shims.redis._common import wrong_type

__all__ = [
    "TAKE_REPLY",
    "WINDOW",
    "WINDOW_BYTES",
    "WRITE",
    "Pending",
    "ReplyWindow",
    "keep",
    "keepable",
]

WINDOW = 64
"""Messages a publisher may have awaiting their reply at once."""

WINDOW_BYTES = 8 * 1024 * 1024
"""Bytes of messages a publisher may have awaiting their reply at once."""


Step = Literal["take a reply", "write"]

TAKE_REPLY: Step = "take a reply"
"""A step of `ReplyWindow.send_steps`: read the oldest pending message's reply."""

WRITE: Step = "write"
"""A step of `ReplyWindow.send_steps`: write the message (`accept` it first)."""


def keepable(buffer: Any) -> Any:
    """`buffer` itself if it cannot change (bytes, a read-only view), else a copy.

    A message is kept until Redis acknowledged it, to be written again on a
    new connection: the caller may reuse a mutable buffer once `send` returns.
    """
    if type(buffer) is bytes or memoryview(buffer).readonly:
        return buffer
    return bytes(buffer)


def keep(message: Any) -> tuple[Any, int]:
    """`keepable(message)` and its size in bytes: what a publisher's `send` keeps."""
    kept = keepable(message)
    return kept, len(kept) if type(kept) is bytes else memoryview(kept).nbytes


class Pending:
    """One message awaiting its reply: its packed command, topic and size."""

    __slots__ = ("accepted", "command", "size", "topic")

    def __init__(self, topic: str, command: list[Any], size: int) -> None:
        self.topic = topic
        self.command = command
        self.size = size
        self.accepted = False
        """Written (so kept until acknowledged); a retried send must not add it again."""


class ReplyWindow:
    """The pending messages of one publisher, oldest first, and its unraised error reply.

    Args:
        messages: How many messages may await their reply at once.
        nbytes: How many bytes of messages may (one larger message may, alone).
        settle_from: Messages of this many bytes or more are not left
            pending: their send waits for their reply (None: none is).
    """

    __slots__ = ("_failed", "_messages", "_nbytes", "_settle_from", "pending", "pending_bytes")

    def __init__(
        self,
        messages: int = WINDOW,
        nbytes: int = WINDOW_BYTES,
        settle_from: int | None = None,
    ) -> None:
        self._messages = messages
        self._nbytes = nbytes
        self._settle_from = settle_from
        self.pending: deque[Pending] = deque()
        """Messages written and not acknowledged, oldest first."""
        self.pending_bytes = 0
        # First error reply not raised yet: (error, its topic, how many since).
        self._failed: tuple[Exception, str, int] | None = None

    @property
    def failed(self) -> bool:
        """Whether an error reply awaits `raise_failed`."""
        return self._failed is not None

    def full_for(self, size: int) -> bool:
        """Whether a reply must come before a message of `size` bytes may be written."""
        pending = self.pending
        return bool(pending) and (
            len(pending) >= self._messages or self.pending_bytes + size > self._nbytes
        )

    def settles(self, size: int) -> bool:
        """Whether a message of `size` bytes, once written, waits for its reply."""
        return self._settle_from is not None and size >= self._settle_from

    def send_steps(self, item: Pending) -> Iterator[Step]:
        """What a send of `item` does once it took the replies that already arrived.

        The caller carries out each step before asking for the next: take
        replies until the window has room, write the message unless an
        error reply is waiting to be raised, then (a message that `settles`)
        take replies until its own came. An `item` accepted by an earlier,
        failed attempt is pending already: nothing is left to do.
        """
        if item.accepted:
            return
        while self.full_for(item.size):
            yield TAKE_REPLY
        if self.failed:
            return
        yield WRITE
        if self.settles(item.size):
            while self.pending:
                yield TAKE_REPLY

    def accept(self, item: Pending) -> None:
        """Note that `item` is being written: it now awaits its reply."""
        self.pending.append(item)
        self.pending_bytes += item.size
        item.accepted = True

    def acknowledge(self, error: Exception | None = None) -> None:
        """The oldest pending message got its reply: `error` if it was an error reply."""
        item = self.pending.popleft()
        self.pending_bytes -= item.size
        if error is None:
            return
        if self._failed is None:
            self._failed = (error, item.topic, 1)
        else:
            first, topic, count = self._failed
            self._failed = (first, topic, count + 1)

    def commands(self) -> list[Any]:
        """Every pending message's command, in order: what a new connection is sent first."""
        return [chunk for item in self.pending for chunk in item.command]

    def drop(self) -> int:
        """Forget every pending message (given up on); return how many there were."""
        dropped = len(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return dropped

    def give_up(self, exc: Exception) -> None:
        """`drop` the pending messages, and say how many in `exc` (the reason to give up)."""
        dropped = self.drop()
        if dropped:
            exc.args = (f"{exc.args[0]}; {dropped} unacknowledged message(s) dropped",)

    def raise_failed(self, *, broker: str, key_type: str | None) -> None:
        """Raise the first error reply not raised yet, mapped, naming its topic.

        Raises:
            ValueError: For WRONGTYPE (the topic names a key of another type).
            BufferFullError: For OOM (Redis is at ``maxmemory``).
            StreamError: For any other error reply, as `map_errors` maps it.
        """
        failed, self._failed = self._failed, None
        if failed is None:
            return
        exc, topic, count = failed
        note = f"the reply to an earlier message on topic {topic!r}"
        if count > 1:
            note += f"; {count} messages got an error reply and were not stored"
        try:
            with map_errors(ERRORS, broker=broker), wrong_type([topic], key_type):
                raise exc
        except Exception as mapped:
            mapped.args = (
                (f"{mapped.args[0]} ({note})", *mapped.args[1:]) if mapped.args else (note,)
            )
            raise
