"""RedisConnector specifics (the shared contract is in test_connectors.py)."""

from __future__ import annotations

import array
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import UnsafeKeyError
from tests.conftest import free_port

redis = pytest.importorskip("redis")

from proxystore_stream.store.connectors.redis import RedisConnector  # noqa: E402

HOST, PORT = "127.0.0.1", 6379


@pytest.fixture
def connector(raw: Any) -> Iterator[RedisConnector]:
    made = RedisConnector(HOST, PORT)
    yield made
    made.close()


def test_keys_are_prefixed_uuid_hex(connector: RedisConnector, raw: Any) -> None:
    key = connector.put([b"x"])
    assert key.startswith("pss:")
    assert len(key) == 4 + 32
    int(key[4:], 16)
    assert raw.get(key) == b"x"
    connector.evict(key)
    assert raw.exists(key) == 0


@pytest.mark.parametrize("key", [b"pss:" + b"0" * 32, 42, None, ("pss:", "0")])
def test_non_str_keys_are_refused(connector: RedisConnector, key: Any) -> None:
    for method in (connector.get, connector.exists, connector.evict):
        with pytest.raises(UnsafeKeyError):
            method(key)


def test_foreign_keys_are_never_touched(connector: RedisConnector, raw: Any) -> None:
    # A key from a message must not read or delete an unrelated Redis key.
    victim = "pss-test-victim"
    raw.set(victim, b"precious")
    try:
        for key in (victim, "pss:" + "0" * 31, "pss:" + "G" * 32, "pss:" + "0" * 32 + "x"):
            with pytest.raises(UnsafeKeyError):
                connector.evict(key)
            with pytest.raises(UnsafeKeyError):
                connector.get(key)
        assert raw.get(victim) == b"precious"
    finally:
        raw.delete(victim)


def test_frames_of_any_item_size_are_stored_by_bytes(connector: RedisConnector) -> None:
    doubles = array.array("d", [1.5, 2.5, 3.5])
    key = connector.put([memoryview(doubles)])
    assert connector.get(key) == doubles.tobytes()
    key2 = connector.put([b"head", memoryview(doubles)])
    assert connector.get(key2) == b"head" + doubles.tobytes()
    connector.evict(key)
    connector.evict(key2)


def test_put_batch_is_one_round_trip_and_empty_is_fine(connector: RedisConnector) -> None:
    assert connector.put_batch([]) == []
    keys = connector.put_batch([[b"a"], [b"b", b"c"]])
    assert [connector.get(k) for k in keys] == [b"a", b"bc"]
    for key in keys:
        connector.evict(key)


def test_db_and_kwargs_pass_through(raw: Any) -> None:
    connector = RedisConnector(HOST, PORT, db=1, client_name="pss-test")
    try:
        key = connector.put([b"in db 1"])
        assert raw.exists(key) == 0
        other = redis.Redis(HOST, PORT, db=1)
        try:
            assert other.get(key) == b"in db 1"
        finally:
            other.close()
        config = connector.config()
        assert config == {"hostname": HOST, "port": PORT, "db": 1, "client_name": "pss-test"}
        msgpack.packb(config)
        rebuilt = RedisConnector.from_config(config)
        assert rebuilt.get(key) == b"in db 1"
        rebuilt.close()
        connector.evict(key)
    finally:
        connector.close()


def test_config_leaves_out_objects_with_a_warning(raw: Any) -> None:
    retry = redis.retry.Retry(redis.backoff.NoBackoff(), 1)
    connector = RedisConnector(HOST, PORT, retry=retry, socket_timeout=3.0)
    try:
        with pytest.warns(RuntimeWarning, match="retry"):
            config = connector.config()
        assert config == {"hostname": HOST, "port": PORT, "db": 0, "socket_timeout": 3.0}
        msgpack.packb(config)
    finally:
        connector.close()


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"hostname": HOST},
        {"hostname": 1, "port": PORT},
        {"hostname": HOST, "port": "6379"},
        {"hostname": HOST, "port": True},
        {"hostname": HOST, "port": PORT, "no_such_option": 1},
        [HOST, PORT],
    ],
)
def test_bad_config_raises_value_error(config: Any) -> None:
    with pytest.raises(ValueError, match="config"):
        RedisConnector.from_config(config)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="hostname"):
        RedisConnector(1, PORT)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="port"):
        RedisConnector(HOST, "6379")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decode_responses"):
        RedisConnector(HOST, PORT, decode_responses=True)


def test_unreachable_redis_raises_broker_connection_error() -> None:
    connector = RedisConnector(HOST, free_port())
    start = time.monotonic()
    try:
        with pytest.raises(BrokerConnectionError) as info:
            connector.put([b"x"])
        assert isinstance(info.value, ConnectionError)
        assert time.monotonic() - start < 10
    finally:
        connector.close()
    connector.close()  # idempotent
