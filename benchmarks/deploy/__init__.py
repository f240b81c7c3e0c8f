"""Benchmarks that measure deploy: see benchmarks/README.md."""
