"""Benchmarks that measure step: see benchmarks/README.md."""
