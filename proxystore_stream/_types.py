"""Type aliases shared across the package."""

from __future__ import annotations

from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview
"""A bytes-like object (collections.abc.Buffer arrives only in Python 3.12)."""
