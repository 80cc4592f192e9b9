"""Shared test setup: keep every test's data under a temporary LLMPLAT_HOME unless told."""
