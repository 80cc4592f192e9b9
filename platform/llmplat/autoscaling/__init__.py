"""Replica autoscaling on the engine's own signals (queue, KV cache, time to first token)."""
