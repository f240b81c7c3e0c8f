"""Benchmarks that measure quality: see benchmarks/README.md."""
