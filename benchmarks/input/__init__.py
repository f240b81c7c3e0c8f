"""Benchmarks that measure input: see benchmarks/README.md."""
