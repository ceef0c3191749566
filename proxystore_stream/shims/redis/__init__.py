"""Redis shims: pub/sub (fan-out), list queue (work queue) and Streams (groups).

| module | semantics | persistence | acknowledgement | delivery |
| --- | --- | --- | --- | --- |
| `pubsub` | fan-out | none | none | at-most-once |
| `queue` | work queue | until acknowledged | LTRIM of a processing list | at-least-once |
| `streams` | groups | until trimmed | XACK | at-least-once |

The classes: `RedisPublisher`/`RedisSubscriber` (pubsub),
`RedisQueuePublisher`/`RedisQueueSubscriber` (queue),
`RedisStreamPublisher`/`RedisStreamSubscriber` (streams). Every class has an
`Async` twin (redis.asyncio) in the same module, and a `from_url`
classmethod. Keyword arguments pass through to `redis.Redis`
(``password``, ``username``, ``db``, ``ssl``, ``ssl_ca_certs``...).

Publishers, sync and async, pipeline: `send` returns once the command is
written, at most 64 messages (8 MiB) await Redis's replies, an error reply
is raised by a later call naming its topic, and `flush()` (called by the
stream producer's `flush`/`close`) waits for every reply.

Publishers and the queue and Streams subscribers reconnect under a
`RetryPolicy` (``retry=``, default a 30 s deadline) and then raise
`BrokerConnectionError`; the pub/sub subscriber reconnects only when given
``retry=`` (it misses what was published meanwhile). Each module's
docstring holds its full semantics table.
"""

from __future__ import annotations

from proxystore_stream.shims.redis.pubsub import AsyncRedisPublisher
from proxystore_stream.shims.redis.pubsub import AsyncRedisSubscriber
from proxystore_stream.shims.redis.pubsub import RedisPublisher
from proxystore_stream.shims.redis.pubsub import RedisSubscriber
from proxystore_stream.shims.redis.queue import AsyncRedisQueuePublisher
from proxystore_stream.shims.redis.queue import AsyncRedisQueueSubscriber
from proxystore_stream.shims.redis.queue import RedisQueuePublisher
from proxystore_stream.shims.redis.queue import RedisQueueSubscriber
from proxystore_stream.shims.redis.streams import AsyncRedisStreamPublisher
from proxystore_stream.shims.redis.streams import AsyncRedisStreamSubscriber
from proxystore_stream.shims.redis.streams import RedisStreamPublisher
from proxystore_stream.shims.redis.streams import RedisStreamSubscriber

__all__ = [
    "AsyncRedisPublisher",
    "AsyncRedisQueuePublisher",
    "AsyncRedisQueueSubscriber",
    "AsyncRedisStreamPublisher",
    "AsyncRedisStreamSubscriber",
    "AsyncRedisSubscriber",
    "RedisPublisher",
    "RedisQueuePublisher",
    "RedisQueueSubscriber",
    "RedisStreamPublisher",
    "RedisStreamSubscriber",
    "RedisSubscriber",
]
