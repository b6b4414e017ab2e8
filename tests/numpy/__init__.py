"""Tests of bnlib.numpy, one file per module."""
