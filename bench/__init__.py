"""Benchmarks run by hand (`make bench`); see bench/README.md."""
