"""Proxies: transparent, lazy, resolve once, and travel to other processes unresolved."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from proxystore_stream.exceptions import ProxyResolveMissingKeyError
from proxystore_stream.proxy import Proxy
from proxystore_stream.proxy import extract
from proxystore_stream.proxy import get_factory
from proxystore_stream.proxy import is_resolved
from proxystore_stream.proxy import resolve
from proxystore_stream.store import FileConnector
from proxystore_stream.store import Store


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[int]:
        self.calls += 1
        return [1, 2, 3]


def test_proxy_is_transparent_and_resolves_once() -> None:
    factory = Counter()
    proxy: Proxy[list[int]] = Proxy(factory)
    assert not is_resolved(proxy)
    assert isinstance(proxy, list)
    assert [*proxy, 4] == [1, 2, 3, 4]
    assert len(proxy) == 3
    assert proxy[0] == 1
    assert 2 in proxy
    assert proxy.count(2) == 1
    assert is_resolved(proxy)
    assert factory.calls == 1
    assert type(extract(proxy)) is list


def test_resolve_helper() -> None:
    proxy: Proxy[list[int]] = Proxy(Counter())
    resolve(proxy)
    assert is_resolved(proxy)


def test_pickling_does_not_resolve(tmp_path: Path) -> None:
    store: Store[Any] = Store("s", FileConnector(tmp_path))
    big = {"a": b"x" * 1_000_000}
    proxy = store.proxy(big)
    data = pickle.dumps(proxy)
    assert not is_resolved(proxy)
    assert len(data) < 1000, "the pickle carries the key and store config, not the data"
    clone = pickle.loads(data)
    assert not is_resolved(clone)
    assert clone == big


def _resolve_in_child(proxy: Any, results: Any) -> None:
    results.put((type(proxy).__name__, is_resolved(proxy), float(proxy.sum()), proxy.shape))


def test_proxy_resolves_in_a_spawned_process(tmp_path: Path) -> None:
    store: Store[Any] = Store("s", FileConnector(tmp_path))
    array = np.arange(1000, dtype=np.float64)
    proxy = store.proxy(array, evict=True)
    key = get_factory(proxy).key
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_resolve_in_child, args=(proxy, results))
    child.start()
    name, resolved_on_arrival, total, shape = results.get(timeout=60)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert (name, resolved_on_arrival) == ("Proxy", False)
    assert total == float(array.sum())
    assert shape == (1000,)
    assert not is_resolved(proxy), "the parent never resolved it"
    assert not store.exists(key), "evict-on-resolve happened in the child"


def test_numpy_and_bytes_round_trip_through_file_store(tmp_path: Path) -> None:
    store: Store[Any] = Store("s", FileConnector(tmp_path))
    array = np.random.default_rng(0).random((64, 64))
    out = store.get(store.put(array))
    assert np.array_equal(out, array)
    assert not out.flags.writeable, "a zero-copy view of the read buffer"
    blob = bytes(range(256)) * 4096
    key = store.put(blob)
    assert (tmp_path / key).stat().st_size == len(blob) + 1  # tagged by put()
    assert store.get(key) == blob


def test_missing_key_error_carries_facts(tmp_path: Path) -> None:
    store: Store[Any] = Store("s", FileConnector(tmp_path))
    proxy: Proxy[Any] = store.proxy_from_key("0" * 32)
    with pytest.raises(ProxyResolveMissingKeyError) as info:
        resolve(proxy)
    assert info.value.key == "0" * 32
    assert info.value.store_name == "s"
