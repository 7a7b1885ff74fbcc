"""The results store: run folders and their records (results), run identity, sharding and merge.

It knows nothing of benchmarks: a benchmark's ``summarize`` is handed in by the caller (the API).
"""
