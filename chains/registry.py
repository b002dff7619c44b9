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


def adapter_class(name: str) -> Any:
    """The adapter class registered as `name`; raises UnknownAdapter listing the known names."""
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()
    known = ", ".join(adapter_names()) or "none"
    raise UnknownAdapter(f"unknown adapter {name!r} (known: {known})")


def create_adapter(name: str, settings: ChainSettings) -> ChainAdapter:
    adapter: ChainAdapter = adapter_class(name)(settings)
    return adapter
