"""Helpers the tests, the demo and the benchmarks share (test images, real components the tests
start); never part of the installed package."""
