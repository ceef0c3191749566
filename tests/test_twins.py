"""Sync and async twins keep the same public methods and signatures."""

from __future__ import annotations

import importlib
import inspect

import pytest

from proxystore_stream import AsyncStreamConsumer
from proxystore_stream import AsyncStreamProducer
from proxystore_stream import StreamConsumer
from proxystore_stream import StreamProducer

SHIM_MODULES = ["queue", "local", "redis", "zmq", "kafka", "rabbitmq"]

# Constructors that take a client object of a different library on each side
# (kafka-python vs aiokafka) differ in what they can derive from it; every
# other method of these pairs must still match.
DIFFERENT_CONSTRUCTORS = {"KafkaPublisher", "KafkaSubscriber"}

# Defaults that differ on purpose, each measured and documented: the async
# ZeroMQ publisher copies on the event loop, so it sends large payloads
# without a copy from a lower size (DEFAULT_ASYNC_ZERO_COPY_THRESHOLD).
DIFFERENT_DEFAULTS = {("ZeroMQPublisher", "__init__", "zero_copy_threshold")}

# Methods only async subscribers have: receive_ready() lets AsyncStreamConsumer
# take a message that is already here without awaiting a coroutine; a sync
# consumer has no coroutine to save.
ASYNC_ONLY = {"receive_ready"}


def _public(cls: type) -> dict[str, inspect.Signature]:
    methods = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ("__init__",):
            continue
        if callable(member):
            methods[name] = inspect.signature(member)
    return methods


def _pairs() -> list[tuple[type, type]]:
    pairs: list[tuple[type, type]] = [
        (StreamProducer, AsyncStreamProducer),
        (StreamConsumer, AsyncStreamConsumer),
    ]
    for name in SHIM_MODULES:
        try:
            module = importlib.import_module(f"proxystore_stream.shims.{name}")
        except ImportError:
            continue
        for attr in getattr(module, "__all__", []):
            if attr.startswith("Async") and hasattr(module, attr[len("Async") :]):
                pairs.append((getattr(module, attr[len("Async") :]), getattr(module, attr)))
    return pairs


@pytest.mark.parametrize(("sync", "async_"), _pairs(), ids=lambda c: c.__name__)
def test_twins_have_the_same_methods_and_signatures(sync: type, async_: type) -> None:
    sync_methods, async_methods = _public(sync), _public(async_)
    assert sorted(sync_methods) == sorted(set(async_methods) - ASYNC_ONLY)
    for name, signature in sync_methods.items():
        if name == "__init__" and sync.__name__ in DIFFERENT_CONSTRUCTORS:
            continue
        assert list(signature.parameters) == list(async_methods[name].parameters), name
        for param, value in signature.parameters.items():
            if (sync.__name__, name, param) in DIFFERENT_DEFAULTS:
                continue
            assert value.default == async_methods[name].parameters[param].default, (name, param)
