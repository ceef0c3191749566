"""Collect every `cases_*.py` module's CASES into the `shim` fixture; a private Redis."""

from __future__ import annotations

import importlib
import pkgutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.shims
from tests.faults.redis_server import RedisServer
from tests.shims.cases import ShimCase
from tests.shims.cases import ShimFactory


def _all_cases() -> list[ShimCase]:
    cases: list[ShimCase] = []
    for info in sorted(pkgutil.iter_modules(tests.shims.__path__), key=lambda i: i.name):
        if info.name.startswith("cases_"):
            module = importlib.import_module(f"tests.shims.{info.name}")
            cases.extend(module.CASES)
    return cases


ALL_CASES = _all_cases()


@pytest.fixture(params=ALL_CASES, ids=[case.name for case in ALL_CASES])
def case(request: pytest.FixtureRequest) -> ShimCase:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def factory(case: ShimCase) -> Iterator[ShimFactory]:
    made = case.make()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (to pause, fill or cut off), noeviction."""
    made = RedisServer(tmp_path / "redis", options=["--maxmemory-policy", "noeviction"])
    made.start()
    try:
        yield made
    finally:
        made.stop(signal.SIGKILL)
