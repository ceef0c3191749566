"""Stream Python objects between processes through pluggable message brokers.

Pick a shim (`proxystore_stream.shims.*`), construct a `StreamProducer`,
iterate a `StreamConsumer`. Large objects go to a `Store`; consumers get
lazy proxies that resolve where the data is needed.
"""

from __future__ import annotations

from proxystore_stream.consumer import AsyncStreamConsumer
from proxystore_stream.consumer import StreamConsumer
from proxystore_stream.producer import AsyncStreamProducer
from proxystore_stream.producer import StreamProducer

__version__ = "0.1.0"

__all__ = [
    "AsyncStreamConsumer",
    "AsyncStreamProducer",
    "StreamConsumer",
    "StreamProducer",
    "__version__",
]
