"""Receive buffers placed where copies through them stay fast.

A buffer of a megabyte or more comes from ``mmap``, so it starts 16 bytes
past the start of a memory page, and so do the other large buffers a message
passes through on its way in (hiredis's, the `bytes` of the reply). Receiving
1 MiB Redis pub/sub messages through such a buffer cost 2-2.5x the CPU per
message in the kernel's copy into it and hiredis's copy out of it, against
any other page offset tried (0, 32, 48, 64, 128, 512, 2048 and 4080:
docs/benchmarks.md, session 10). The likely cause is the CPU mistaking
loads for stores to an address a multiple of 4 KiB away (4K aliasing). A
buffer from `receive_buffer` starts half-way into a page, as far from that
as it can be.
"""

from __future__ import annotations

import ctypes

__all__ = ["PAGE_OFFSET", "page_offset", "receive_buffer"]

_PAGE = 4096

PAGE_OFFSET = 2048
"""Where in a 4 KiB page a `receive_buffer` starts."""


def page_offset(buffer: bytearray | memoryview) -> int:
    """Where in its 4 KiB page the first byte of the writable `buffer` lies."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer)) % _PAGE


def receive_buffer(size: int) -> memoryview:
    """Return a writable buffer of `size` bytes starting `PAGE_OFFSET` bytes into a page.

    Raises:
        ValueError: If `size` is not positive.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, not {size}")
    memory = bytearray(size + _PAGE)
    start = (PAGE_OFFSET - page_offset(memory)) % _PAGE
    return memoryview(memory)[start : start + size]
