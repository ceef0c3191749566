"""Async publishers that never wait still give the event loop a turn."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

import pytest

from proxystore_stream._fair import YIELD_BYTES
from proxystore_stream._fair import YIELD_MESSAGES
from proxystore_stream._fair import FairShare
from proxystore_stream.shims.local import AsyncLocalPublisher
from proxystore_stream.shims.local import LocalBroker
from proxystore_stream.shims.local import LocalSubscriber
from proxystore_stream.shims.queue import AsyncQueuePublisher


def test_a_share_is_used_up_by_count_or_by_bytes() -> None:
    fair = FairShare()
    assert [fair.due(1) for _ in range(YIELD_MESSAGES)] == [False] * (YIELD_MESSAGES - 1) + [True]
    assert fair.due(YIELD_BYTES - 1) is False
    assert fair.due(1) is True
    assert fair.due(0) is False  # a new share started


async def _ticks_while_sending(publisher: Any, n: int) -> int:
    """How often another task ran while `publisher` sent `n` messages."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    start = ticks
    for i in range(n):
        await publisher.send("t", b"%d" % i)
    done = True
    await task
    return ticks - start


@pytest.mark.parametrize("shim", ["local", "queue"])
def test_a_sending_task_lets_other_tasks_run(shim: str) -> None:
    n = YIELD_MESSAGES * 10
    q: Any = multiprocessing.Queue()
    try:
        if shim == "local":
            broker = LocalBroker()
            LocalSubscriber(broker, "t", maxsize=n)  # room for every message: no waiting
            publisher: Any = AsyncLocalPublisher(broker)
        else:
            publisher = AsyncQueuePublisher({"t": q})
        ticks = asyncio.run(_ticks_while_sending(publisher, n))
    finally:
        q.cancel_join_thread()
        q.close()
    assert ticks >= n // YIELD_MESSAGES - 1
