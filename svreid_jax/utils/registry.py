"""Name → entry tables for the extension points (variants, backbones, evaluation protocols, dataset
readers, loss terms), with the same rules everywhere: a name is registered once, and an unknown name is
an error naming the config field and listing the known names."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Registry:
    """kind: what an entry is ('variant', 'backbone', …); config_field: the field that names one
    ('config.variant', 'model.arch', …), for error messages, or None where no single field does (loss
    terms are chosen by their weights)."""

    def __init__(self, kind: str, config_field: str | None, entries: Mapping[str, Any]):
        self.kind = kind
        self.config_field = config_field
        self._entries = dict(entries)

    def register(self, name: str, entry: Any) -> None:
        """Make `config_field=name` select `entry`; a name may be registered once."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        """Remove `name` (tests and notebooks that try an entry out)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Any:
        try:
            return self._entries[name]
        except KeyError:
            named = f"unknown {self.kind} {name!r}" if self.config_field is None else \
                f"{self.config_field}={name!r}: unknown {self.kind}"
            raise ValueError(f"{named}; expected one of {self.names()}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def values(self) -> list[Any]:
        """The entries in the order they were registered (where order matters, e.g. a sum of loss terms)."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
