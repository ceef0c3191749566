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

    Use: ``if fair.due(len(message)): await asyncio.sleep(0)``. (A plain
    method, not a coroutine: most calls must not even make a coroutine.)
    """

    __slots__ = ("_bytes", "_messages")

    def __init__(self) -> None:
        self._bytes = 0
        self._messages = 0

    def due(self, size: int) -> bool:
        """Note a send of `size` bytes; True when the sender should yield now."""
        self._bytes += size
        self._messages += 1
        if self._bytes < YIELD_BYTES and self._messages < YIELD_MESSAGES:
            return False
        self._bytes = 0
        self._messages = 0
        return True
