"""Tests of the chapters' toolkit bnlib.book, one file per module."""
