"""Finds chain adapters by the name used in the config (`adapter: evm`).

Adapters are registered as entry points in the group `deposit_watcher.chains`, the built-in ones too, so a
third-party package adds a chain by declaring an entry point, without editing this project.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from chains.base import ChainAdapter, ChainSettings

GROUP = "deposit_watcher.chains"


class UnknownAdapter(LookupError):
    """No adapter is registered under that name."""


def adapter_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


# Loaded adapter classes by name. entry_points() reads every installed package's metadata (~85 files
# here, ~7 ms): looked up once per name, not once per address the merchant API issues.
_LOADED: dict[str, Any] = {}


def adapter_class(name: str) -> Any:
    """The adapter class registered as `name`; raises UnknownAdapter listing the known names."""
    found = _LOADED.get(name)
    if found is not None:
        return found
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            found = _LOADED[name] = ep.load()
            return found
    known = ", ".join(adapter_names()) or "none"
    raise UnknownAdapter(f"unknown adapter {name!r} (known: {known})")


def create_adapter(name: str, settings: ChainSettings) -> ChainAdapter:
    adapter: ChainAdapter = adapter_class(name)(settings)
    return adapter
