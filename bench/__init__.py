"""Benchmarks of semihard_numba against its own backends, the peers people use, and x @ x.T.

Run ``python -m bench --help`` from the repository root; see bench/README.md.
"""
