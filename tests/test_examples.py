"""The example scripts run against the embedded default and against Redis."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_broker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, script, *args],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("script", ["simple_publisher.py", "simple_async_publisher.py"])
def test_local_examples_run_both_ends(script: str) -> None:
    out = run(script, "--broker", "local", "--count", "5")
    assert out.count("received") == 5
    assert "received {'i': 4, 'square': 16}" in out
    assert out.rstrip().endswith("stream ended")


@pytest.mark.parametrize(
    ("publisher", "subscriber"),
    [
        ("simple_publisher.py", "simple_async_subscriber.py"),
        ("simple_async_publisher.py", "simple_subscriber.py"),
    ],
)
def test_redis_examples_across_processes(publisher: str, subscriber: str) -> None:
    require_broker("Redis", "127.0.0.1", 6379)
    topic = f"pss-example-{uuid.uuid4().hex[:8]}"
    try:
        sent = run(publisher, "--broker", "redis", "--topic", topic, "--count", "4")
        assert sent.count("sent") == 4
        out = run(subscriber, "--broker", "redis", "--topic", topic)
        assert [line for line in out.splitlines() if line.startswith("received")] == [
            f"received {{'i': {i}, 'square': {i * i}}} with metadata {{'i': {i}}}" for i in range(4)
        ]
    finally:
        import redis

        redis.Redis("127.0.0.1", 6379).delete(topic)
