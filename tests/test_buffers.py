"""`receive_buffer`: where it starts in a page, and what it refuses; `page_offset`."""

from __future__ import annotations

import pytest

from proxystore_stream._buffers import PAGE_OFFSET
from proxystore_stream._buffers import page_offset
from proxystore_stream._buffers import receive_buffer


@pytest.mark.parametrize("size", [1, 100, 4096, 65536, 1 << 20, 4 << 20])
def test_starts_half_way_into_a_page(size: int) -> None:
    buffer = receive_buffer(size)
    assert buffer.nbytes == size
    assert page_offset(buffer) == PAGE_OFFSET


def test_is_writable_to_its_last_byte() -> None:
    buffer = receive_buffer(10)
    buffer[:] = b"0123456789"
    assert bytes(buffer) == b"0123456789"


@pytest.mark.parametrize("size", [0, -1])
def test_refuses_sizes_below_one(size: int) -> None:
    with pytest.raises(ValueError, match="size must be positive"):
        receive_buffer(size)


def test_page_offset_counts_from_the_page_start() -> None:
    memory = bytearray(3 * 4096)
    first = page_offset(memory)
    assert 0 <= first < 4096
    assert page_offset(memoryview(memory)[100:]) == (first + 100) % 4096
    assert page_offset(memoryview(memory)[4096:]) == first
