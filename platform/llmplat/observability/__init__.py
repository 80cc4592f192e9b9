"""Metrics and the audit log."""
