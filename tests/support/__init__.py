"""Test harnesses shared by several test packages (real components started by the tests)."""
