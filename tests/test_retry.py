"""RetryPolicy: bounded, jittered, and a clear error at the deadline."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.retry import NO_RETRY
from proxystore_stream.retry import RetryPolicy


def test_delays_grow_to_the_maximum_and_stay_there() -> None:
    policy = RetryPolicy(initial=0.1, maximum=0.5)
    ceilings = list(itertools.islice(policy.delays(rng=lambda low, high: high), 6))
    assert ceilings == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]


def test_delays_are_jittered_between_zero_and_the_ceiling() -> None:
    policy = RetryPolicy(initial=0.2, maximum=0.2)
    delays = list(itertools.islice(policy.delays(), 200))
    assert all(0.0 <= d <= 0.2 for d in delays)
    assert len(set(delays)) > 150


def test_call_retries_until_the_operation_succeeds() -> None:
    failures = iter([ConnectionError("down"), ConnectionError("down")])
    seen: list[BaseException] = []

    def operation() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    policy = RetryPolicy(deadline=5.0, initial=0.001, maximum=0.001)
    result = policy.call(operation, retry_on=(ConnectionError,), broker="b", on_retry=seen.append)
    assert result == "ok"
    assert [str(e) for e in seen] == ["down", "down"]


def test_call_gives_up_at_the_deadline_with_broker_connection_error() -> None:
    calls = 0

    def operation() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    policy = RetryPolicy(deadline=0.2, initial=0.01, maximum=0.02)
    with pytest.raises(BrokerConnectionError, match=r"gave up after .* refused") as info:
        policy.call(operation, retry_on=(ConnectionError,), broker="redis://x")
    assert info.value.broker == "redis://x"
    assert isinstance(info.value.__cause__, ConnectionError)
    assert 2 <= calls <= 200


def test_other_errors_are_not_retried() -> None:
    def operation() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        RetryPolicy().call(operation, retry_on=(ConnectionError,), broker="b")


def test_no_retry_fails_at_the_first_error() -> None:
    calls = 0

    def operation() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    with pytest.raises(BrokerConnectionError):
        NO_RETRY.call(operation, retry_on=(ConnectionError,), broker="b")
    assert calls == 1


def test_call_async_retries_and_gives_up() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    policy = RetryPolicy(deadline=0.1, initial=0.01, maximum=0.01)
    with pytest.raises(BrokerConnectionError):
        asyncio.run(policy.call_async(operation, retry_on=(ConnectionError,), broker="b"))
    assert calls >= 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"deadline": -1}, ValueError),
        ({"initial": "1"}, TypeError),
        ({"initial": 3.0, "maximum": 1.0}, ValueError),
        ({"maximum": True}, TypeError),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
