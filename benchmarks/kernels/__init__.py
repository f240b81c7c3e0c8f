"""Benchmarks that measure kernels: see benchmarks/README.md."""
