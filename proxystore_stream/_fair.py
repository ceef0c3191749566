"""Make async sends that never wait give the event loop a turn now and then.

An async publisher whose broker accepts a message at once (an in-process
buffer with room, a queue's feeder thread) returns from `send` without
suspending. A producer task sending in a loop then never lets the consumer
task or anything else on the loop run: it fills every buffer before anyone
drains it, which is slow for large messages (memory traffic instead of
cache-warm hand-overs) and starves the rest of the program. `FairShare`
counts what was sent without suspending and says when to yield.
"""

from __future__ import annotations

__all__ = ["FairShare"]

YIELD_BYTES = 1 << 20
"""Yield after about this many bytes sent without suspending."""

YIELD_MESSAGES = 64
"""... or after this many messages, whichever comes first."""


class FairShare:
    """Counts sends that did not suspend and says when a share is used up.

    Ask before each send, and yield first when told::

        if fair.due(len(message)):
            await asyncio.sleep(0)
        ...send without suspending...

    Yielding before the send (not after) keeps cancellation honest: a send
    cancelled while it yields has sent nothing. `due` is a plain method, not
    a coroutine, so the sends that need not yield do not even make one.

    Args:
        messages: Yield after this many sends at most.
        nbytes: ... or after this many bytes, whichever comes first.
    """

    __slots__ = ("_bytes", "_max_bytes", "_max_messages", "_messages")

    def __init__(self, *, messages: int = YIELD_MESSAGES, nbytes: int = YIELD_BYTES) -> None:
        self._max_messages = messages
        self._max_bytes = nbytes
        self._bytes = 0
        self._messages = 0

    def due(self, size: int) -> bool:
        """Note a coming send of `size` bytes; True when the sender should yield first."""
        if self._bytes < self._max_bytes and self._messages < self._max_messages:
            self._bytes += size
            self._messages += 1
            return False
        self._bytes = size
        self._messages = 1
        return True
