"""Pieces shared by the Redis shims: client construction, checks, error map.

Everything here is either pure (argument checks, URL parsing), builds a
client, or sends the commands a shim hands it (`roundtrip`); nothing here
decides what to send.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any
from typing import TypeVar

from proxystore_stream.exceptions import require

try:
    import redis
    import redis.asyncio.retry
    import redis.retry
    from redis._parsers import _HiredisParser
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.backoff import NoBackoff
    from redis.connection import DefaultParser
    from redis.connection import SSLConnection
    from redis.connection import UnixDomainSocketConnection
    from redis.connection import parse_url
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    require(__name__.rpartition(".")[0], "redis", "redis", e)

from proxystore_stream._offload import SLICE_SECONDS
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import BufferFullError
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims._errors import ErrorMap

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # the [redis] extra installs it; redis.asyncio packs commands in Python
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is part of the extra
    _hiredis_pack = None

READER_BUFFER = 8 * 1024 * 1024
"""Spare bytes a subscriber connection's hiredis reader keeps between replies.

hiredis frees its buffer whenever it empties with more than 16 KiB to spare
and grows a new one, reallocation by reallocation, for the next large
reply: a subscriber of 1 MiB messages did that for nearly every one. Kept
up to 8 MiB per connection, a 1 MiB pub/sub message costs its subscriber
about 40-70 us less CPU, sync and async (docs/benchmarks.md, session 9).
"""


class _KeepingHiredisParser(_HiredisParser):
    """redis-py's hiredis parser, its reader keeping `READER_BUFFER` between replies."""

    def on_connect(self, connection: Any, **kwargs: Any) -> None:
        parser: Any = super()  # redis-py's parsers are not annotated
        parser.on_connect(connection, **kwargs)
        self._reader.setmaxbuf(READER_BUFFER)


def subscriber_client(options: dict[str, Any]) -> redis.Redis:
    """A `redis.Redis` for a subscriber: its connections' hiredis readers keep their buffer.

    Only where redis-py would parse with hiredis anyway; other parsers are
    left as they are.
    """
    client = redis.Redis(**options)
    connection_kwargs = client.connection_pool.connection_kwargs
    if connection_kwargs.get("parser_class", DefaultParser) is _HiredisParser:
        connection_kwargs["parser_class"] = _KeepingHiredisParser
    return client


__all__ = [
    "CONNECTION_ERRORS",
    "DEFAULT_RETRY",
    "ERRORS",
    "FATAL_ERRORS",
    "READER_BUFFER",
    "SLICE_SECONDS",
    "broker_name",
    "check_message",
    "check_name",
    "check_replies",
    "check_retry",
    "check_topic",
    "client_kwargs",
    "default_consumer",
    "own_connection",
    "pack_commands",
    "roundtrip",
    "stop_if_fatal",
    "stop_if_fatal_async",
    "subscriber_client",
    "topic_list",
    "url_arguments",
    "wrong_type",
]

T = TypeVar("T")

CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
"""Client exceptions that mean the connection to Redis failed or was lost."""

FATAL_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
)
"""Connection errors that waiting cannot cure (credentials, ACL): never retried."""

# AuthenticationError and BusyLoadingError subclass ConnectionError: the most
# specific match wins, and all of them mean "cannot talk to this broker".
# OOM is Redis at `maxmemory` refusing writes: the broker-side bound.
ERRORS: ErrorMap = {
    **dict.fromkeys(CONNECTION_ERRORS, BrokerConnectionError),
    redis.exceptions.OutOfMemoryError: BufferFullError,
}

# Bounded defaults so one attempt fails in a few seconds, not a minute.
CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 10.0
# redis-py does not retry on its own: a `RetryPolicy` decides, so a lost
# connection is retried once per policy attempt (not 3 x per attempt), and
# a command that is unsafe to repeat blindly (LTRIM) is never repeated.
RETRIES = 0

DEFAULT_RETRY = RetryPolicy()
"""Reconnect policy of the shims that reconnect by default (30 s deadline)."""


def broker_name(hostname: str, port: int, kwargs: dict[str, Any]) -> str:
    """Describe the broker for error messages (no credentials)."""
    scheme = "rediss" if kwargs.get("ssl") else "redis"
    if kwargs.get("unix_socket_path"):
        return f"unix://{kwargs['unix_socket_path']}"
    return f"{scheme}://{hostname}:{port}/{kwargs.get('db', 0)}"


def client_kwargs(
    hostname: str,
    port: int,
    kwargs: dict[str, Any],
    *,
    protocol: int,
    retries: int = RETRIES,
    asyncio: bool = False,
) -> dict[str, Any]:
    """Build the keyword arguments of `redis.Redis` for a shim.

    The caller's `kwargs` win over every default set here.

    Args:
        hostname: Redis host.
        port: Redis port.
        kwargs: Caller's extra arguments for the client.
        protocol: RESP version to use unless the caller chose one (2 or 3).
        retries: redis-py's own reconnect attempts on a lost connection.
        asyncio: Build arguments for `redis.asyncio.Redis`.

    Raises:
        TypeError: If `hostname` or `port` has the wrong type.
        ValueError: If `port` is out of range, or ``decode_responses=True``
            is passed (messages are bytes).
    """
    if kwargs.get("decode_responses"):
        raise ValueError("decode_responses must be False: messages are bytes")
    if not isinstance(hostname, str):
        raise TypeError(f"hostname must be a str, not {type(hostname).__name__}")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, not {port}")
    backoff = NoBackoff() if retries == 0 else ExponentialWithJitterBackoff(0.5, 0.02)
    retry_class = redis.asyncio.retry.Retry if asyncio else redis.retry.Retry
    made: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "protocol": protocol,
        "retry": retry_class(backoff, retries),
    }
    if asyncio:
        made["socket_read_size"] = 1 << 20
    made.update(kwargs)
    made["host"] = hostname
    made["port"] = port
    return made


def url_arguments(url: str) -> tuple[str, int, dict[str, Any]]:
    """Split a Redis URL into (hostname, port, client keyword arguments).

    Supports ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs with the
    query options redis-py understands (``?db=1&protocol=2`` ...).

    Raises:
        TypeError: If `url` is not a str.
        ValueError: If the URL scheme is not one of the above.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    parsed: dict[str, Any] = dict(parse_url(url))  # type: ignore[no-untyped-call]
    connection_class = parsed.pop("connection_class", None)
    hostname = str(parsed.pop("host", "localhost"))
    port = int(parsed.pop("port", 6379))
    if connection_class is not None and issubclass(connection_class, SSLConnection):
        parsed["ssl"] = True
    elif connection_class is not None and issubclass(
        connection_class,
        UnixDomainSocketConnection,
    ):
        parsed["unix_socket_path"] = parsed.pop("path")
    return hostname, port, parsed


def topic_list(topic: str | Sequence[str]) -> list[str]:
    """Normalise a topic argument to a non-empty list without duplicates.

    Raises:
        TypeError: If `topic` is not a str or a sequence of str.
        ValueError: If `topic` is empty.
    """
    topics = [topic] if isinstance(topic, str) else topic
    if not isinstance(topics, Sequence) or not all(isinstance(t, str) for t in topics):
        raise TypeError(
            f"topic must be a str or a sequence of str, not {type(topic).__name__}",
        )
    unique = list(dict.fromkeys(topics))
    if not unique or not all(unique):
        raise ValueError("topic must name at least one non-empty topic")
    return unique


def check_retry(retry: RetryPolicy | None, default: RetryPolicy = DEFAULT_RETRY) -> RetryPolicy:
    """Return `retry`, or `default` for None.

    Raises:
        TypeError: If `retry` is neither a `RetryPolicy` nor None (e.g. a
            redis-py ``Retry``: reconnection is ours, redis-py's is off).
    """
    if retry is None:
        return default
    if not isinstance(retry, RetryPolicy):
        raise TypeError(
            f"retry must be a proxystore_stream.retry.RetryPolicy or None, "
            f"not {type(retry).__name__}",
        )
    return retry


def stop_if_fatal(exc: BaseException, broker: str) -> None:
    """Raise `BrokerConnectionError` at once if retrying cannot cure `exc`.

    Used as (part of) a `RetryPolicy` ``on_retry`` hook, so a wrong password
    fails at the first attempt instead of after the policy's deadline.
    """
    if isinstance(exc, FATAL_ERRORS):
        raise BrokerConnectionError(
            f"{type(exc).__name__}: {exc} (not retried: check the credentials)",
            broker=broker,
        ) from exc


async def stop_if_fatal_async(exc: BaseException, broker: str) -> None:
    """Async form of `stop_if_fatal` for `RetryPolicy.call_async`."""
    stop_if_fatal(exc, broker)


@contextmanager
def wrong_type(topics: Sequence[str], kind: str | None) -> Iterator[None]:
    """Turn Redis's WRONGTYPE reply into a ValueError naming the topics.

    Args:
        topics: The topics the commands touched.
        kind: What each topic's key must be (``"list"``); None passes
            WRONGTYPE through unchanged.
    """
    try:
        yield
    except redis.ResponseError as exc:
        if kind is None or not str(exc).startswith("WRONGTYPE"):
            raise
        raise ValueError(
            f"topic {', '.join(map(repr, topics))}: a Redis key of another type "
            f"than {kind} has that name",
        ) from exc


def check_name(value: str, name: str) -> str:
    """Return `value` if it is a non-empty str; else raise naming `name`."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    return value


def default_consumer() -> str:
    """Return a consumer name unique to this process: ``host-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def own_connection(client: Any, **overrides: Any) -> Any:
    """Make a connection of `client`'s kind (TCP, TLS, unix) that no pool shares.

    It connects on its first command and again on the first command after
    it was dropped, with the client's credentials, database and timeouts
    (`overrides` replace some, e.g. ``socket_timeout=None``).
    """
    pool = client.connection_pool
    return pool.connection_class(**{**pool.connection_kwargs, **overrides})


def roundtrip(
    connection: Any,
    commands: Sequence[tuple[Any, ...]],
    *,
    check: bool = True,
) -> list[Any]:
    """Send `commands` in one write and return their replies, in order.

    Cheaper than a redis-py pipeline (about half the client time per
    round trip): no command stack, no response callbacks. Replies are raw
    RESP values (bytes, int, list, None).

    Args:
        connection: A connection of `own_connection`.
        commands: Commands as argument tuples, e.g. ``("LTRIM", key, 0, -2)``.
        check: Raise the first error reply; with False, error replies are
            returned in place as `redis.ResponseError` instances.

    Raises:
        redis.ResponseError: The first error reply (with `check`), after
            every reply was read (the connection stays usable).
        redis.ConnectionError: If the connection failed (it is dropped, so
            the next call reconnects).
    """
    connection.send_packed_command(connection.pack_commands(commands))
    replies = [_read(connection) for _ in commands]
    return check_replies(replies) if check else replies


def pack_commands(connection: Any, commands: Sequence[tuple[Any, ...]]) -> Any:
    """Pack small commands (no large argument) for `connection.send_packed_command`.

    Uses hiredis when installed: redis.asyncio packs in Python, at about
    twice the cost per command.
    """
    if _hiredis_pack is None:
        return connection.pack_commands(commands)
    return [b"".join([_hiredis_pack(command) for command in commands])]


def _read(connection: Any) -> Any:
    try:
        return connection.read_response()
    except redis.ResponseError as exc:
        return exc


def check_replies(replies: list[Any]) -> list[Any]:
    """Return `replies`, or raise the first error reply among them."""
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies


def check_topic(topic: str) -> None:
    """Raise TypeError/ValueError unless `topic` is a non-empty str."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a str, not {type(topic).__name__}")
    if not topic:
        raise ValueError("topic must not be empty")


def check_message(message: bytes) -> None:
    """Raise TypeError unless `message` is bytes-like."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise TypeError(
            f"message must be bytes, not {type(message).__name__}",
        )
