"""The core needs no broker client; a missing extra names what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
sys.modules[{client!r}] = None  # as if the client were not installed
import proxystore_stream, proxystore_stream.shims, proxystore_stream.shims.queue
try:
    import proxystore_stream.{module}
except ImportError as exc:
    from proxystore_stream.exceptions import MissingDependencyError
    assert isinstance(exc, MissingDependencyError), type(exc)
    print(exc)
else:
    raise SystemExit("imported without its client")
"""


@pytest.mark.parametrize(
    ("module", "client", "extra"),
    [
        ("shims.redis", "redis", "redis"),
        ("store.connectors.redis", "redis", "redis"),
        ("shims.zmq", "zmq", "zmq"),
        ("shims.kafka", "kafka", "kafka"),
        ("shims.rabbitmq", "pika", "rabbitmq"),
    ],
)
def test_missing_extra_is_named(module: str, client: str, extra: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module, client=client)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install 'proxystore-stream[{extra}]'" in result.stdout


def test_core_imports_no_broker_client() -> None:
    code = (
        "import sys, proxystore_stream, proxystore_stream.shims.queue, "
        "proxystore_stream.shims.local, proxystore_stream.store;"
        "print(sorted(m for m in ('redis','zmq','kafka','pika','aiokafka','aio_pika') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
