"""The demo and test tooling of a repository checkout: launchers for local anvil and bcoin nodes, the test
ERC-20 and its helpers, the local Esplora API, the test merchant receiver and the demo itself.

It is not part of the installed daemon (the wheel holds `watcher` and `chains` only): it lives in the
checkout, next to the `node_modules` its launchers run, which is why paths are taken from `REPO_ROOT`.
"""

from pathlib import Path

# The checkout this package sits in: node_modules/ (anvil, bcoin, solcjs) and config/ are found from here.
REPO_ROOT = Path(__file__).resolve().parents[1]
