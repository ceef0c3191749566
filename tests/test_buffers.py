"""`receive_buffer`: where it starts in a page, and what it refuses."""

from __future__ import annotations

import ctypes

import pytest

from proxystore_stream._buffers import PAGE_OFFSET
from proxystore_stream._buffers import receive_buffer


@pytest.mark.parametrize("size", [1, 100, 4096, 65536, 1 << 20, 4 << 20])
def test_starts_half_way_into_a_page(size: int) -> None:
    buffer = receive_buffer(size)
    assert buffer.nbytes == size
    assert ctypes.addressof(ctypes.c_char.from_buffer(buffer)) % 4096 == PAGE_OFFSET


def test_is_writable_to_its_last_byte() -> None:
    buffer = receive_buffer(10)
    buffer[:] = b"0123456789"
    assert bytes(buffer) == b"0123456789"


@pytest.mark.parametrize("size", [0, -1])
def test_refuses_sizes_below_one(size: int) -> None:
    with pytest.raises(ValueError, match="size must be positive"):
        receive_buffer(size)
