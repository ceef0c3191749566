"""RedisConnector: serialized objects as Redis string values.

Each blob is one key, ``pss:`` followed by 32 hex digits (a uuid4) made by
`put`; `get`, `exists` and `evict` refuse any other key with
`UnsafeKeyError`, so a key taken from a message can never read or delete an
unrelated Redis key. Writes of several blobs go in one pipelined round trip.

`config()` carries the host, port, db and the other keyword arguments that
are plain data (str, int, float, bool, None, bytes, lists and str-keyed
dicts of those), never pickled objects. Arguments that are not plain data
(an ``ssl_context``, a ``retry`` or ``credential_provider`` object) are left
out of the config with a warning: a consumer in another process rebuilds the
connector without them. Note that a ``password`` passed here travels in
every event that names this store; sign envelopes, or give consumers a
connector of their own.

Example:
    ```python
    connector = RedisConnector("127.0.0.1", 6379, db=2)
    store = Store("cache", connector)
    ```
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Sequence
from typing import Any
from typing import Self

from proxystore_stream._context import ClosingContext
from proxystore_stream.exceptions import require

try:
    import redis
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    require(__name__, "redis", "redis", e)

from proxystore_stream._types import Buffer
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import UnsafeKeyError
from proxystore_stream.shims._errors import ErrorMap
from proxystore_stream.shims._errors import map_errors
from proxystore_stream.store.connectors.protocols import Frames
from proxystore_stream.store.connectors.protocols import Key

__all__ = ["RedisConnector"]

PREFIX = "pss:"
_KEY = re.compile(r"pss:[0-9a-f]{32}")
_ERRORS: ErrorMap = {
    redis.exceptions.ConnectionError: BrokerConnectionError,
    redis.exceptions.TimeoutError: BrokerConnectionError,
}
# Bounded defaults (the caller's kwargs win): an unreachable Redis fails in
# seconds instead of redis-py's ten retries.
_DEFAULTS: dict[str, Any] = {"socket_connect_timeout": 5.0, "socket_timeout": 30.0}
_RETRIES = 3


def _plain(value: Any) -> bool:
    """Whether msgpack can carry `value` as plain data."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _blob(frames: Frames) -> Buffer:
    """One value from the frames: the frame itself if single, else joined."""
    views = [memoryview(frame).cast("B") for frame in frames]
    if len(views) == 1:
        return views[0]
    return b"".join(views)


def _check_key(key: Key) -> str:
    if type(key) is not str or _KEY.fullmatch(key) is None:
        raise UnsafeKeyError(
            f"RedisConnector keys are {PREFIX!r} and 32 hex digits made by put(); refused {key!r}",
        )
    return key


class RedisConnector(ClosingContext):
    """Keeps each serialized object under its own Redis key.

    Args:
        hostname: Redis host.
        port: Redis port.
        **kwargs: Passed to `redis.Redis` (``db``, ``password``,
            ``username``, ``ssl``, ``ssl_ca_certs``, ``socket_timeout``...).

    Raises:
        TypeError: If `hostname` or `port` has the wrong type.
        ValueError: If ``decode_responses=True`` is passed (blobs are bytes).
    """

    kind = "redis"

    def __init__(self, hostname: str, port: int, **kwargs: Any) -> None:
        if not isinstance(hostname, str):
            raise TypeError(f"hostname must be a str, not {type(hostname).__name__}")
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if kwargs.get("decode_responses"):
            raise ValueError("decode_responses must be False: blobs are bytes")
        self.hostname = hostname
        self.port = port
        self._kwargs = dict(kwargs)
        options = {**_DEFAULTS, **kwargs}
        if "retry" not in options:
            options["retry"] = redis.retry.Retry(
                redis.backoff.ExponentialWithJitterBackoff(0.5, 0.02),
                _RETRIES,
            )
        self._broker = f"redis://{hostname}:{port}/{kwargs.get('db', 0)}"
        self._client = redis.Redis(hostname, port, **options)

    def __repr__(self) -> str:
        return f"RedisConnector({self._broker!r})"

    def put(self, frames: Frames) -> Key:
        """Store one blob under a new key and return the key.

        Raises:
            BrokerConnectionError: If Redis cannot be reached.
        """
        key = PREFIX + uuid.uuid4().hex
        with map_errors(_ERRORS, broker=self._broker):
            self._client.set(key, _blob(frames))
        return key

    def put_batch(self, blobs: Sequence[Frames]) -> list[Key]:
        """Store several blobs in one pipelined round trip; return their keys.

        Raises:
            BrokerConnectionError: If Redis cannot be reached.
        """
        keys = [PREFIX + uuid.uuid4().hex for _ in blobs]
        if not keys:
            return keys
        with map_errors(_ERRORS, broker=self._broker):
            pipe = self._client.pipeline(transaction=False)
            for key, frames in zip(keys, blobs, strict=True):
                pipe.set(key, _blob(frames))
            pipe.execute()
        return keys

    def get(self, key: Key) -> bytes | None:
        """Return the blob under `key`, or None if there is none.

        Raises:
            UnsafeKeyError: If the key is not one `put` could have made.
            BrokerConnectionError: If Redis cannot be reached.
        """
        name = _check_key(key)
        with map_errors(_ERRORS, broker=self._broker):
            return self._client.get(name)  # type: ignore[return-value]

    def exists(self, key: Key) -> bool:
        """Whether a blob is stored under `key`.

        Raises:
            UnsafeKeyError: If the key is not one `put` could have made.
            BrokerConnectionError: If Redis cannot be reached.
        """
        name = _check_key(key)
        with map_errors(_ERRORS, broker=self._broker):
            return bool(self._client.exists(name))

    def evict(self, key: Key) -> None:
        """Remove the blob under `key` (no error if it is gone).

        UNLINK frees the memory in the background, so evicting a large blob
        does not stall Redis.

        Raises:
            UnsafeKeyError: If the key is not one `put` could have made.
            BrokerConnectionError: If Redis cannot be reached.
        """
        name = _check_key(key)
        with map_errors(_ERRORS, broker=self._broker):
            self._client.unlink(name)

    def config(self) -> dict[str, Any]:
        """Return the host, port, db and plain-data keyword arguments.

        Arguments that are not plain data are left out, with a warning.
        """
        dropped = sorted(k for k, v in self._kwargs.items() if not _plain(v))
        if dropped:
            warnings.warn(
                f"RedisConnector.config() leaves out {dropped}: they are not "
                "plain data and cannot travel in a message; consumers in other "
                "processes connect without them",
                RuntimeWarning,
                stacklevel=2,
            )
        kept = {k: v for k, v in self._kwargs.items() if k not in dropped}
        return {"hostname": self.hostname, "port": self.port, "db": 0, **kept}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """Rebuild a connector from `config()` output.

        Raises:
            ValueError: If the config has no valid hostname and port.
        """
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, not {type(config).__name__}")
        options = dict(config)
        hostname = options.pop("hostname", None)
        port = options.pop("port", None)
        bad_port = not isinstance(port, int) or isinstance(port, bool)
        if not isinstance(hostname, str) or bad_port:
            raise ValueError(
                f"config needs a str 'hostname' and an int 'port', got {config!r}",
            )
        if not all(isinstance(k, str) for k in options):
            raise ValueError("config keys must be str")
        try:
            return cls(hostname, port, **options)
        except TypeError as exc:
            raise ValueError(f"invalid RedisConnector config: {exc}") from exc

    def close(self) -> None:
        """Close the connections (idempotent)."""
        self._client.close()
