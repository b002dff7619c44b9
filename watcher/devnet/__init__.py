"""Local development chains for tests and the demo: an anvil launcher, the test ERC-20 and its helpers."""
