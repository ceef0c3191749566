"""Helpers shared by the pipelining tests of the Redis publishers (sync and async)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HOST, PORT = "127.0.0.1", 6379
BOUND = 30.0
"""Seconds any wait in these tests may take at most."""


def name() -> str:
    return f"pss-pipe-{uuid.uuid4().hex[:12]}"


@contextmanager
def paused(admin: Any) -> Iterator[None]:
    """Hold back every write command on the server until the block ends (CLIENT PAUSE WRITE)."""
    admin.client_pause(int(BOUND * 1000), all=False)
    try:
        yield
    finally:
        admin.client_unpause()
