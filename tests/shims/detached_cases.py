"""What the detached-message tests of every shim share: objects and checks."""

from __future__ import annotations

from typing import Any

Case = tuple[Any, dict[str, Any] | None, bool]
"""(object, metadata, whether it travels detached) for one send."""


def objects_around(threshold: int) -> list[Case]:
    """Objects at, above and below a shim's detach threshold, raw and pickled."""
    return [
        (b"x" * (1 << 20), None, True),
        (b"y" * threshold, {"i": 1}, True),
        (b"z" * (threshold - 1), None, False),
        (bytearray(b"b" * 100_000), {"i": 3}, True),  # pickle, out-of-band frames
        (b"small", None, False),
    ]


def assert_delivered(got: list[tuple[dict[str, Any], Any]], cases: list[Case]) -> None:
    """The consumer handed over every object, of its own type, with its metadata, in order."""
    assert [obj for _, obj in got] == [obj for obj, _, _ in cases]
    assert [type(obj) for _, obj in got] == [type(obj) for obj, _, _ in cases]
    assert [m for m, _ in got] == [m or {} for _, m, _ in cases]


def detached_kinds(cases: list[Case]) -> list[bool]:
    """Which messages of `cases` (and the end of stream after them) travel detached."""
    return [detached for _, _, detached in cases] + [False]
