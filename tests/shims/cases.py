"""The shape of a conformance case: how the suite builds a shim's endpoints.

Each broker module `tests/shims/cases_<broker>.py` defines `CASES`, a list of
`ShimCase`. The conformance suite (`test_conformance.py`) runs every test
against every case, sync and async, through the same fixtures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Protocol


class ShimFactory(Protocol):
    """Builds the endpoints of one shim for one test.

    The suite always creates the publisher first, then the subscribers,
    then sends. `subscriber()` returns only when the subscriber is ready to
    receive (its subscription reached the broker), so nothing sent after it
    returns is missed. A factory may keep per-test state (ports, names) and
    must release everything it made in `close()`.
    """

    def publisher(self) -> Any: ...

    def subscriber(self, topics: Sequence[str]) -> Any: ...

    async def async_publisher(self) -> Any: ...

    async def async_subscriber(self, topics: Sequence[str]) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ShimCase:
    """One shim configuration the conformance suite runs against.

    Attributes:
        name: Test id, e.g. ``"redis-stream"``.
        make: Builds a fresh factory for one test (skips/fails there if the
            broker is unreachable: see `tests.conftest.require_broker`).
        fanout: True if every subscriber gets every message; False if each
            message goes to exactly one subscriber (work queue / group).
        persistent: True if messages sent while no subscriber exists are
            delivered to a subscriber that comes later.
        multi_topic: True if one subscriber can listen to several topics.
        has_async: True if `async_publisher`/`async_subscriber` work.
        unreachable_publisher: Builds a publisher aimed at a dead endpoint and
            sends through it; must raise BrokerConnectionError in bounded time.
            None where the transport has no notion of unreachable (ZeroMQ,
            in-process).
        unreachable_subscriber: Same for a subscriber (construct + receive).
    """

    name: str
    make: Callable[[], ShimFactory]
    fanout: bool
    persistent: bool
    multi_topic: bool = True
    has_async: bool = True
    unreachable_publisher: Callable[[], Any] | None = None
    unreachable_subscriber: Callable[[], Any] | None = None


def close_quietly(*endpoints: Any) -> None:
    """Close endpoints, ignoring errors (cleanup after a failed test)."""
    for endpoint in endpoints:
        with contextlib.suppress(Exception):
            endpoint.close()
