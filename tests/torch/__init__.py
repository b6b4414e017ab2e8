"""Tests of bnlib.torch, one file per module (test_kernels.py: _kernels and _reductions)."""
