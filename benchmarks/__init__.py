"""Benchmarks: each prints figures measured in one run (``python -m benchmarks.<name> --help``)."""
