"""Async publishers that never wait still give the event loop a turn."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from typing import Any

import pytest

from proxystore_stream._fair import YIELD_BYTES
from proxystore_stream._fair import YIELD_MESSAGES
from proxystore_stream._fair import FairShare
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.shims.local import AsyncLocalPublisher
from proxystore_stream.shims.local import LocalBroker
from proxystore_stream.shims.local import LocalSubscriber
from proxystore_stream.shims.queue import AsyncQueuePublisher


def test_a_share_is_used_up_by_count_or_by_bytes() -> None:
    fair = FairShare()
    assert [fair.due(1) for _ in range(YIELD_MESSAGES + 1)] == [False] * YIELD_MESSAGES + [True]
    fair = FairShare(messages=1000)
    assert fair.due(YIELD_BYTES) is False
    assert fair.due(1) is True  # the bytes were used up: yield before this send
    assert fair.due(1) is False  # a new share, with that send counted


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


@pytest.mark.parametrize("shim", ["local", "queue"])
def test_a_send_cancelled_while_it_yields_has_sent_nothing(shim: str) -> None:
    q: Any = multiprocessing.Queue()
    broker = LocalBroker()
    subscriber = LocalSubscriber(broker, "t", maxsize=YIELD_MESSAGES + 1)
    publisher: Any = (
        AsyncLocalPublisher(broker) if shim == "local" else AsyncQueuePublisher({"t": q})
    )

    async def main() -> None:
        for i in range(YIELD_MESSAGES):  # a whole share: none of these yields
            await publisher.send("t", b"%d" % i)
        task = asyncio.ensure_future(publisher.send("t", b"cancelled"))
        await asyncio.sleep(0)  # the send runs up to its yield
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
        if shim == "local":
            received = [subscriber.receive(0) for _ in range(YIELD_MESSAGES)]
            with pytest.raises(StreamTimeoutError):
                subscriber.receive(0)
        else:
            received = [q.get(timeout=5) for _ in range(YIELD_MESSAGES)]
            with pytest.raises(queue.Empty):
                q.get(timeout=0.2)
    finally:
        q.cancel_join_thread()
        q.close()
    assert received == [b"%d" % i for i in range(YIELD_MESSAGES)]
