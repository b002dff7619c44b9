"""Shared pytest fixtures, one section per subject. Real local nodes, never mocks of them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devnet import btc_tools
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode

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


# ------------------------------------------------------------------ bcoin (Bitcoin regtest devnet)


@pytest.fixture(scope="module")
def bcoin() -> Iterator[BcoinNode]:
    """A real bcoin regtest node shared by a test module, funded (`btc_tools.fund`, height 106).

    Its wallet pays from confirmed non-coinbase outputs; `btc_tools.mine` rewards a throwaway address.
    Tests sharing it must not rewrite history (reorg, invalidateblock): use `fresh_bcoin`. Never skipped:
    without node_modules it fails with the `npm ci` hint.
    """
    with BcoinNode() as node:
        btc_tools.fund(node)
        yield node


@pytest.fixture
def fresh_bcoin() -> Iterator[BcoinNode]:
    """A real, funded bcoin regtest node of its own for one test; free to reorganise."""
    with BcoinNode() as node:
        btc_tools.fund(node)
        yield node
