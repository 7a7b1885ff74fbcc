"""Speed and memory profiler: decode latency, throughput and KV memory against BF16 baselines.

Two levels (PERFORMANCE.md): ``kernel`` (one attention layer's decode step) and ``e2e`` (a whole model's
decode step). ``run_speed`` is the Python API behind ``oscar-eval speed``; the arithmetic
(:mod:`~oscar_eval.speed.roofline`), the sweep planning (:mod:`~oscar_eval.speed.plan`) and the results
file (:mod:`~oscar_eval.speed.results`) import no torch and are unit-tested on CPU.
"""

from oscar_eval.speed.runner import NO_CUDA_MESSAGE, NoCudaError, SpeedOptions, run_speed

__all__ = ["NO_CUDA_MESSAGE", "NoCudaError", "SpeedOptions", "run_speed"]
