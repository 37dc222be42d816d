"""Prometheus metrics of the reconciler, a DB-backed collector, and the daemon's HTTP endpoint."""
