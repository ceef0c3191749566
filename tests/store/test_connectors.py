"""Contract suite: every connector behaves the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxystore_stream.events import StoreConfig
from proxystore_stream.exceptions import StoreError
from proxystore_stream.exceptions import UnknownConnectorError
from proxystore_stream.exceptions import UnsafeKeyError
from proxystore_stream.store import FileConnector
from proxystore_stream.store import MemoryConnector
from proxystore_stream.store import Store
from proxystore_stream.store import register_connector
from proxystore_stream.store.registry import connector_class
from proxystore_stream.store.registry import store_from_config
from tests.conftest import require_broker


def _redis() -> Any:
    require_broker("Redis", "127.0.0.1", 6379)
    from proxystore_stream.store.connectors.redis import RedisConnector

    return RedisConnector("127.0.0.1", 6379)


@pytest.fixture(params=["memory", "file", "redis"])
def connector(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = {
        "memory": MemoryConnector,
        "file": lambda: FileConnector(tmp_path / "store"),
        "redis": _redis,
    }[request.param]()
    yield made
    made.close()


def test_put_get_exists_evict(connector: Any) -> None:
    key = connector.put([b"ab", memoryview(b"cd"), bytearray(b"ef")])
    assert isinstance(key, str)
    assert connector.exists(key)
    assert bytes(connector.get(key)) == b"abcdef"
    connector.evict(key)
    connector.evict(key)
    assert not connector.exists(key)
    assert connector.get(key) is None


def test_put_batch_keeps_order(connector: Any) -> None:
    blobs = [[b"%d" % i] for i in range(20)]
    keys = connector.put_batch(blobs)
    assert len(set(keys)) == 20
    assert [bytes(connector.get(k)) for k in keys] == [b"%d" % i for i in range(20)]


def test_large_blob(connector: Any) -> None:
    big = bytes(range(256)) * 40_000
    key = connector.put([big[:1000], big[1000:]])
    assert bytes(connector.get(key)) == big


def test_config_round_trip(connector: Any) -> None:
    rebuilt = type(connector).from_config(connector.config())
    key = connector.put([b"shared"])
    assert bytes(rebuilt.get(key)) == b"shared"
    assert connector_class(connector.kind) is type(connector)


def test_store_from_config_is_cached(connector: Any) -> None:
    store: Store[Any] = Store("cached", connector)
    a = store_from_config(store.config())
    assert a is store_from_config(store.config())
    assert a.get(store.put({"x": 1})) == {"x": 1}


@pytest.mark.parametrize("key", ["../etc/passwd", "/etc/passwd", "a/b", "..", "", "0" * 31 + "/"])
def test_file_keys_cannot_escape_the_directory(tmp_path: Path, key: str) -> None:
    connector = FileConnector(tmp_path / "store")
    for operation in (connector.get, connector.exists, connector.evict):
        with pytest.raises(UnsafeKeyError):
            operation(key)


def test_file_connector_bad_config() -> None:
    with pytest.raises(ValueError, match="directory"):
        FileConnector.from_config({"directory": 5})
    with pytest.raises(TypeError):
        FileConnector(5)  # type: ignore[arg-type]


def test_memory_connector_is_process_local() -> None:
    with pytest.raises(StoreError, match="process"):
        MemoryConnector.from_config({"instance": "not-here"})


def test_unknown_kind_suggests_the_right_one() -> None:
    with pytest.raises(UnknownConnectorError, match="did you mean 'file'"):
        store_from_config(StoreConfig("s", "fille", {}))


def test_third_party_connector_can_register(tmp_path: Path) -> None:
    class Custom(FileConnector):
        kind = "custom-file"

    register_connector("custom-file", Custom)
    store: Store[Any] = Store("c", Custom(tmp_path))
    assert store_from_config(store.config()).get(store.put([1])) == [1]
    with pytest.raises(ValueError, match="built-in"):
        register_connector("file", Custom)
    with pytest.raises(TypeError, match="from_config"):
        register_connector("x", object)
