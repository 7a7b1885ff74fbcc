"""Measurements that explain results (not benchmarks): per-layer attention error of the KV methods."""
