"""Tests against real components or faithful local fakes of them."""
