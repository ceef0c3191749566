"""Wait on an event loop until a file descriptor is readable, however many tasks wait on it.

An event loop keeps one reader callback per file descriptor: a second
`loop.add_reader(fd, ...)` replaces the first, and the first waiter's
`remove_reader(fd)` then ends the second's registration too. Two
subscribers of one `multiprocessing.Queue` on one loop share the queue's
pipe, so waiting on it directly left one of them asleep until its timer
fired. Here every waiter of a descriptor shares one registration, and a
readable descriptor wakes them all (each then tries to take a message; the
ones that find none wait again).
"""

from __future__ import annotations

import asyncio
from weakref import WeakKeyDictionary

__all__ = ["wait_readable", "watchers"]

_Waiters = set["asyncio.Future[None]"]

_WATCHED: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Waiters]] = WeakKeyDictionary()
"""Per event loop: each watched descriptor and the futures waiting on it."""


async def wait_readable(fd: int, timeout: float) -> None:
    """Return once `fd` is readable or `timeout` seconds passed, whichever is first.

    It says nothing about which: the caller tries to read either way. A
    cancelled wait leaves no registration behind.

    Raises:
        NotImplementedError: If the running event loop has no `add_reader`
            (the Windows proactor loop).
    """
    loop = asyncio.get_running_loop()
    watched = _WATCHED.setdefault(loop, {})
    waiters = watched.get(fd)
    if waiters is None:
        waiters = set()
        loop.add_reader(fd, _wake, waiters)
        watched[fd] = waiters
    woken = loop.create_future()
    waiters.add(woken)
    timer = loop.call_later(timeout, _settle, woken)
    try:
        await woken
    finally:
        timer.cancel()
        waiters.discard(woken)
        if not waiters and watched.get(fd) is waiters:
            del watched[fd]
            loop.remove_reader(fd)


def watchers(fd: int) -> int:
    """How many tasks of the running loop wait on `fd` now (for tests)."""
    return len(_WATCHED.get(asyncio.get_running_loop(), {}).get(fd, ()))


def _wake(waiters: _Waiters) -> None:
    for future in waiters:
        _settle(future)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
