"""Throughput benchmarks: the JAX U-Net next to a PyTorch twin (see throughput.py)."""
