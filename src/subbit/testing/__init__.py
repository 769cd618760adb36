"""Builders of tiny synthetic models and data shared by the tests (lhotse's `testing` habit)."""
