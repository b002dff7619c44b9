"""Chain adapters: one subpackage per chain family, all behind the contract in `chains.base`."""
