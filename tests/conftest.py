"""Shared pytest fixtures, one section per subject. Real local nodes, never mocks of them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from watcher.devnet.anvil import AnvilNode

# ------------------------------------------------------------------------------- anvil (EVM devnet)


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    """A real anvil shared by a test module, auto-mining every transaction (chain id 31337).

    Tests sharing it must not rewrite history (reorg, rollback, revert, mining mode): use `fresh_anvil`.
    """
    with AnvilNode() as node:
        yield node


@pytest.fixture
def fresh_anvil() -> Iterator[AnvilNode]:
    """A real anvil of its own for one test, auto-mining; free to reorganise or switch mining off."""
    with AnvilNode() as node:
        yield node
