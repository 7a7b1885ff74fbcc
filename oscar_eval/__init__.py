"""oscar-eval: the benchmark harness (LongBench-E, OCRBench, MMAU-Pro, NIAH), profiler and reports.

The compressor lives in :mod:`oscar_core` and knows nothing of this package.
"""

__version__ = "0.1.0"
