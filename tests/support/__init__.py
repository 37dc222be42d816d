"""Helpers the tests, the demo and the benchmarks share; not part of the installed package."""
