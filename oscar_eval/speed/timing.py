"""Timing on a CUDA device: events, warm-up, CUDA-graph replay, median of many repetitions.

``time_fn(fn)`` warms ``fn`` up on a side stream, tries to capture it in a CUDA graph (falling back
to eager launches, with the reason kept), then times repetitions with CUDA events: one event pair per
repetition, one synchronisation at the end. ``fn`` may do several calls per invocation (cycling over
several input sets so that the working set exceeds the L2); times are divided by ``calls``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Timing:
    median_us: float
    min_us: float
    max_us: float
    reps: int
    calls_per_rep: int
    graph: bool
    graph_error: str | None = None
    samples_us: list[float] = field(default_factory=list, repr=False)

    def as_row(self) -> dict[str, Any]:
        return {
            "median_us": round(self.median_us, 3),
            "min_us": round(self.min_us, 3),
            "max_us": round(self.max_us, 3),
            "reps": self.reps,
            "calls_per_rep": self.calls_per_rep,
            "graph": self.graph,
            "graph_error": self.graph_error,
        }


def summarize(samples_us: list[float], calls: int, graph: bool, graph_error: str | None = None) -> Timing:
    if not samples_us:
        raise ValueError("no samples")
    per_call = [s / calls for s in samples_us]
    return Timing(
        median_us=statistics.median(per_call),
        min_us=min(per_call),
        max_us=max(per_call),
        reps=len(per_call),
        calls_per_rep=calls,
        graph=graph,
        graph_error=graph_error,
        samples_us=per_call,
    )


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {msg[0] if msg else ''}"[:300]


def time_fn(
    fn: Callable[[], Any],
    *,
    calls: int = 1,
    warmup: int = 3,
    min_reps: int = 20,
    max_reps: int = 200,
    target_ms: float = 100.0,
    use_graph: bool = True,
    device: torch.device | str | None = None,
) -> Timing:
    """Median/min/max microseconds per call of ``fn`` (which performs ``calls`` calls)."""
    if not torch.cuda.is_available():
        return _time_cpu(fn, calls=calls, warmup=warmup, reps=min_reps)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)

    graph: torch.cuda.CUDAGraph | None = None
    graph_error: str | None = None
    if use_graph:
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            torch.cuda.synchronize(device)
            g.replay()
            torch.cuda.synchronize(device)
            graph = g
        except Exception as exc:  # capture is best effort: report why and time eagerly
            graph_error = _one_line(exc)
            graph = None
            torch.cuda.synchronize(device)
    run = graph.replay if graph is not None else fn

    # Estimate the repetition count from a short timed burst.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        run()
    end.record()
    end.synchronize()
    est_ms = max(start.elapsed_time(end) / 3, 1e-3)
    reps = int(min(max(min_reps, target_ms / est_ms), max_reps))

    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for s, e in events:
        s.record()
        run()
        e.record()
    torch.cuda.synchronize(device)
    samples = [s.elapsed_time(e) * 1e3 for s, e in events]
    used_graph = graph is not None
    del graph, run
    return summarize(samples, calls, used_graph, graph_error)


def _time_cpu(fn: Callable[[], Any], *, calls: int, warmup: int, reps: int) -> Timing:
    """Host-clock fallback, used only by CPU tests of the plumbing (never for reported numbers)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return summarize(samples, calls, graph=False, graph_error="no CUDA device")


def copy_bandwidth_gbps(nbytes: int = 2 << 30, reps: int = 10, device: str = "cuda") -> dict[str, float]:
    """Device-to-device copy of ``nbytes``: GB/s counting bytes read + bytes written (median of reps)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e-3)
    del src, dst
    torch.cuda.empty_cache()
    med = statistics.median(ts)
    return {"gbps": 2 * nbytes / med / 1e9, "max_gbps": 2 * nbytes / min(ts) / 1e9, "bytes": nbytes, "reps": reps}
