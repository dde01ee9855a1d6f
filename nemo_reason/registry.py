"""Named registries (steps, losses, tokenizers, launchers, ...): registering a name twice is an error,
and looking up an unknown name says which names exist and which is closest."""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self.docs: Dict[str, str] = {}

    def register(self, name: str, doc: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            self.docs[name] = doc or ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            hints = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.4)
            raise KeyError(
                f"unknown {self.kind} '{name}'"
                + (f"; did you mean: {', '.join(hints)}?" if hints else "")
                + f" (registered: {', '.join(sorted(self._items))})"
            )
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def names(self):
        return sorted(self._items)


class LazyRegistry(Registry[T]):
    """A registry whose builtin entries live in modules imported on the first look-up (``load``
    imports them), so importing the package that holds it costs nothing."""

    def __init__(self, kind: str, load: Callable[[], None]):
        super().__init__(kind)
        self._load = load

    def get(self, name: str) -> T:
        self._load()
        return super().get(name)

    def names(self):
        self._load()
        return super().names()

    def __contains__(self, name: str) -> bool:
        self._load()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
