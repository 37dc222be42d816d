"""Local stand-ins for external services the tests cannot reach (stdlib only)."""
