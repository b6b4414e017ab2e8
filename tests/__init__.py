"""bnlib's tests: one folder per package, one file per module; cross-cutting suites here."""
