"""Per-team and per-key quotas: reservation at admission, settlement at the end."""
