"""Benchmarks that measure gpu: see benchmarks/README.md."""
