"""Filters: decide from an event's metadata whether to drop it (True drops).

Any callable `metadata -> bool` is a filter; these are the common ones.

Example:
    ```python
    # Keep only frames of detector 3 that are not calibration frames.
    drop = AnyOf(MetadataFilter({"detector": 3}), Not(MetadataFilter({"calibration": True})))
    ```

Careful with the direction: a filter returns True to DROP. `MetadataFilter`
returns True (drop) for events that do NOT match; wrap it in `Not` to drop
the events that do.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

from proxystore_stream.protocols import Filter

__all__ = ["AllOf", "AnyOf", "MetadataFilter", "Not", "NullFilter", "SamplingFilter"]

_ABSENT = object()


class NullFilter:
    """Drops nothing."""

    def __call__(self, metadata: dict[str, Any]) -> bool:
        """Return False: keep the event."""
        return False


class SamplingFilter:
    """Drops each event at random with probability `p` (as in ProxyStore).

    Args:
        p: Probability of dropping an event, in [0, 1].
        seed: Seed for a private random generator (reproducible sampling).

    Raises:
        ValueError: If `p` is not in [0, 1].
    """

    def __init__(self, p: float, *, seed: int | None = None) -> None:
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise ValueError(f"Filter probability p must be in [0, 1]. Got p={p!r}.")
        self.p = float(p)
        self._random = random.Random(seed)

    def __call__(self, metadata: dict[str, Any]) -> bool:
        """Return True (drop) with probability p."""
        return self._random.random() < self.p


class MetadataFilter:
    """Keeps only events whose metadata matches every condition; drops the rest.

    Args:
        conditions: Metadata key to the required value, or to a predicate
            called with the value (a callable condition). A key missing from
            the metadata never matches.

    Example:
        ```python
        MetadataFilter({"kind": "frame", "index": lambda i: i % 10 == 0})
        ```
    """

    def __init__(self, conditions: Mapping[str, Any | Callable[[Any], bool]]) -> None:
        if not isinstance(conditions, Mapping) or not all(
            isinstance(key, str) for key in conditions
        ):
            raise TypeError("conditions must map metadata keys (str) to values or predicates")
        self.conditions = dict(conditions)

    def __call__(self, metadata: dict[str, Any]) -> bool:
        """Return True (drop) unless every condition matches."""
        for key, condition in self.conditions.items():
            value = metadata.get(key, _ABSENT)
            if value is _ABSENT:
                return True
            if callable(condition):
                if not condition(value):
                    return True
            elif value != condition:
                return True
        return False


def _check_filters(filters: tuple[Filter, ...]) -> tuple[Filter, ...]:
    if not filters:
        raise ValueError("give at least one filter")
    for f in filters:
        if not callable(f):
            raise TypeError(f"{f!r} is not a filter (a callable metadata -> bool)")
    return filters


class AllOf:
    """Drops an event only if every filter drops it."""

    def __init__(self, *filters: Filter) -> None:
        self.filters = _check_filters(filters)

    def __call__(self, metadata: dict[str, Any]) -> bool:
        """Return True (drop) if all filters return True."""
        return all(f(metadata) for f in self.filters)


class AnyOf:
    """Drops an event if any filter drops it (the event must pass them all)."""

    def __init__(self, *filters: Filter) -> None:
        self.filters = _check_filters(filters)

    def __call__(self, metadata: dict[str, Any]) -> bool:
        """Return True (drop) if any filter returns True."""
        return any(f(metadata) for f in self.filters)


class Not:
    """Drops exactly the events the wrapped filter keeps."""

    def __init__(self, filter_: Filter) -> None:
        self.filter = _check_filters((filter_,))[0]

    def __call__(self, metadata: dict[str, Any]) -> bool:
        """Return the opposite of the wrapped filter."""
        return not self.filter(metadata)
