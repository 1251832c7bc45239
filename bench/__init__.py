"""Benchmarks: figures measured against floors in the same run (see bench/RESULTS.md)."""
