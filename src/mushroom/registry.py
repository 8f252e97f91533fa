"""A named, ordered registry: the mechanism behind :mod:`mushroom.variants` and :mod:`mushroom.backbones`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class _Named(Protocol):
    name: str


T = TypeVar("T", bound=_Named)


class Registry(Generic[T]):
    """Entries by name, in registration order.

    Args:
        kind: What an entry is, for messages (``"variant"``, ``"architecture"``).
        protected: Names that cannot be removed.
    """

    def __init__(self, kind: str, protected: tuple[str, ...] = ()):
        self.kind = kind
        self.protected = protected
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Add ``entry`` after the registered ones."""
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register their own)."""
        if name in self.protected:
            raise ValueError(f"{self.kind} {name!r} is required and cannot be removed")
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry ``name``; ``ValueError`` naming the allowed ones otherwise (configuration
        validation reports that message as it is)."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; allowed: {self.names()}") from None

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._entries.values()))
