"""Run a blocking receive in a worker thread without losing messages on cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic
from typing import TypeVar

from proxystore_stream.exceptions import StreamTimeoutError

T = TypeVar("T")

# A worker thread never blocks longer than this, so a closed subscriber frees
# its thread promptly and a new timeout is honoured on the next slice.
SLICE_SECONDS = 0.1


class OffloadedReceive(Generic[T]):
    """Await a blocking `receive(timeout)` that runs in a worker thread.

    The blocking call is made in short slices. If the awaiting task is
    cancelled, the slice under way keeps running and whatever it returns is
    handed to the next call, so cancellation loses no message.

    Args:
        receive: Blocking call taking a timeout in seconds; raises
            `StreamTimeoutError` when the slice expires.
    """

    def __init__(self, receive: Callable[[float], T]) -> None:
        self._receive = receive
        self._pending: asyncio.Future[T] | None = None

    @property
    def busy(self) -> bool:
        """Whether a slice from a cancelled call is still pending (take it first)."""
        return self._pending is not None

    async def __call__(self, timeout: float | None) -> T:
        """Return the next item, waiting `timeout` seconds at most (None: forever)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._pending is None:
                remaining = SLICE_SECONDS
                if deadline is not None:
                    remaining = max(0.0, min(remaining, deadline - loop.time()))
                self._pending = asyncio.ensure_future(
                    asyncio.to_thread(self._receive, remaining),
                )
            pending = self._pending
            try:
                result = await asyncio.shield(pending)
            except StreamTimeoutError:
                self._pending = None
                if deadline is not None and loop.time() >= deadline:
                    raise
                continue
            except BaseException:
                if pending.done():
                    self._pending = None
                raise
            self._pending = None
            return result
