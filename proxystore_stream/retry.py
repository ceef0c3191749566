"""Bounded, jittered retries for reconnecting to a broker.

Shims that can reconnect take a `RetryPolicy` (``retry=``). When the broker
goes away they try again with exponentially growing, fully jittered delays
("full jitter": each delay is uniform in ``[0, min(maximum, initial * 2**n)]``,
so many clients that lost the same broker do not come back in lockstep).
When the broker stays away past ``deadline`` seconds the operation raises
`BrokerConnectionError`: a clear error, never a silent hang.

Example:
    ```python
    policy = RetryPolicy(deadline=10.0)
    value = policy.call(lambda: client.get("k"), retry_on=(ConnectionError,), broker="redis")
    ```
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

from proxystore_stream.exceptions import BrokerConnectionError

__all__ = ["NO_RETRY", "RetryPolicy"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Retryable = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry an operation that lost its broker.

    Attributes:
        deadline: Seconds after the first failure at which to give up and
            raise `BrokerConnectionError`. ``0`` disables retrying.
        initial: Upper bound of the first delay, in seconds.
        maximum: Upper bound of any one delay, in seconds.
    """

    deadline: float = 30.0
    initial: float = 0.05
    maximum: float = 2.0

    def __post_init__(self) -> None:
        for name in ("deadline", "initial", "maximum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, not {type(value).__name__}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, not {value}")
        if self.initial > self.maximum:
            raise ValueError(f"initial ({self.initial}) must not exceed maximum ({self.maximum})")

    def delays(self, rng: Callable[[float, float], float] = random.uniform) -> Iterator[float]:
        """Yield jittered delays, without end; callers bound them by the deadline.

        Args:
            rng: ``uniform(a, b)``; injectable for tests.
        """
        ceiling = self.initial
        while True:
            yield rng(0.0, ceiling)
            ceiling = min(self.maximum, ceiling * 2)

    def call(
        self,
        operation: Callable[[], T],
        *,
        retry_on: Retryable,
        broker: str,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> T:
        """Run `operation`, retrying on `retry_on` errors until the deadline.

        Args:
            operation: The work to do; it must be safe to repeat.
            retry_on: Exception classes that mean "the broker is away".
            broker: Description of the broker for log lines and the error.
            on_retry: Called with the error before each retry (e.g. to drop
                a dead connection).

        Raises:
            BrokerConnectionError: If the broker is still away after the deadline.
        """
        attempts = _Attempts(self, broker)
        while True:
            try:
                return operation()
            except retry_on as exc:
                delay = attempts.next_delay(exc)
                if on_retry is not None:
                    on_retry(exc)
                time.sleep(delay)

    async def call_async(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        retry_on: Retryable,
        broker: str,
        on_retry: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> T:
        """Async twin of `call`: awaits `operation` and sleeps with asyncio.

        Raises:
            BrokerConnectionError: If the broker is still away after the deadline.
        """
        attempts = _Attempts(self, broker)
        while True:
            try:
                return await operation()
            except retry_on as exc:
                delay = attempts.next_delay(exc)
                if on_retry is not None:
                    await on_retry(exc)
                await asyncio.sleep(delay)


NO_RETRY = RetryPolicy(deadline=0.0, initial=0.0, maximum=0.0)
"""Fail at the first lost connection (the error is still a `BrokerConnectionError`)."""


class _Attempts:
    """The bookkeeping one `call` shares with its async twin."""

    def __init__(self, policy: RetryPolicy, broker: str) -> None:
        self.policy = policy
        self.broker = broker
        self.start: float | None = None
        self.count = 0
        self.delays = policy.delays()

    def next_delay(self, exc: BaseException) -> float:
        """Return how long to sleep before the next attempt, or raise if past the deadline."""
        now = time.monotonic()
        if self.start is None:
            self.start = now
        self.count += 1
        delay = next(self.delays)
        if now + delay - self.start >= self.policy.deadline:
            raise BrokerConnectionError(
                f"gave up after {self.count} attempt(s) in {now - self.start:.1f} s "
                f"(deadline {self.policy.deadline} s): {type(exc).__name__}: {exc}",
                broker=self.broker,
            ) from exc
        logger.warning(
            "%s unreachable (%s: %s); retry %d in %.2f s",
            self.broker,
            type(exc).__name__,
            exc,
            self.count,
            delay,
        )
        return delay
