"""Context-manager mixins: ``with``/``async with`` that close what they opened.

Every endpoint of this library (producers, consumers, stores, shims) closes
itself on leaving a ``with`` block; these mixins say so once.
"""

from __future__ import annotations

from typing import Protocol
from typing import Self
from typing import cast


class _Closable(Protocol):
    def close(self) -> None: ...


class _AsyncClosable(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...


class ClosingContext:
    """``with obj:`` returns obj and calls ``obj.close()`` on the way out."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        cast(_Closable, self).close()


class AsyncClosingContext:
    """``async with obj:`` returns obj and awaits ``obj.close()`` on the way out."""

    __slots__ = ()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cast(_AsyncClosable, self).close()


class AsyncOpeningContext(AsyncClosingContext):
    """As `AsyncClosingContext`, and awaits ``obj.open()`` on the way in."""

    __slots__ = ()

    async def __aenter__(self) -> Self:
        await cast(_AsyncClosable, self).open()
        return self
