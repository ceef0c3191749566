"""`wait_readable`: many tasks waiting on one file descriptor of one event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from proxystore_stream._readable import wait_readable
from proxystore_stream._readable import watchers


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def test_every_waiter_wakes_when_the_descriptor_becomes_readable(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe

    async def main() -> tuple[int, int, list[None]]:
        waits = [asyncio.ensure_future(wait_readable(read_fd, 60)) for _ in range(3)]
        await asyncio.sleep(0)
        waiting = watchers(read_fd)
        os.write(write_fd, b"x")
        woken = await asyncio.wait_for(asyncio.gather(*waits), 10)
        return waiting, watchers(read_fd), woken

    waiting, left, woken = asyncio.run(main())
    assert (waiting, left, woken) == (3, 0, [None, None, None])


def test_a_wait_ends_at_its_timeout_and_leaves_no_registration(pipe: tuple[int, int]) -> None:
    read_fd, _ = pipe

    async def main() -> tuple[bool, int, bool]:
        loop = asyncio.get_running_loop()
        await wait_readable(read_fd, 0.01)
        # The loop no longer watches the descriptor: a reader of our own can
        # be added (and removed) without replacing anyone's.
        loop.add_reader(read_fd, lambda: None)
        removed = loop.remove_reader(read_fd)
        return removed, watchers(read_fd), loop.remove_reader(read_fd)

    assert asyncio.run(main()) == (True, 0, False)


def test_a_cancelled_wait_leaves_the_others_waiting(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe

    async def main() -> tuple[int, int, bool]:
        first = asyncio.ensure_future(wait_readable(read_fd, 60))
        second = asyncio.ensure_future(wait_readable(read_fd, 60))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        remaining = watchers(read_fd)
        os.write(write_fd, b"x")
        await asyncio.wait_for(second, 10)
        return remaining, watchers(read_fd), second.done()

    assert asyncio.run(main()) == (1, 0, True)
