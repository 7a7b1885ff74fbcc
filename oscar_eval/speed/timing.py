"""The one timing harness: every time oscar-eval measures (the profiler, the kernel scripts, the CPU
decode-step script) comes from these functions.

On a CUDA device, times are CUDA-event intervals on the GPU's clock; on CPU, the host's
``time.perf_counter`` (injectable as ``clock`` so tests run on a fake clock). What each measures:

* :func:`time_fn`: microseconds per call of ``fn``. ``warmup`` calls on a side stream, then (when
  ``use_graph``) one capture of ``fn`` in a CUDA graph, replayed (eager launches if capture fails, the
  reason kept); a 3-call burst sets the repetition count to fill ``target_ms`` within
  [``min_reps``, ``max_reps``] (``min_reps == max_reps`` fixes it); then one event pair around each
  repetition. Without ``sync_each`` the repetitions are queued back to back and synchronised once at
  the end (pure GPU time); with it each one waits for the previous (each starts on an idle GPU, as
  the kernel scripts measure). Reported: median, min and max over repetitions, divided by ``calls``
  (the calls ``fn`` makes, e.g. cycling over input sets larger than the L2). On CPU: ``warmup`` calls,
  then ``min_reps`` host-clock repetitions.
* :func:`burst_us`: mean microseconds per call of ``n`` back-to-back calls inside one event pair (or
  host-clock interval): a quick estimate, for picking a repetition count or an input layout.
* :func:`host_call_us`: one call on the host clock (arms interleaved step by step on CPU).
* :func:`copy_bandwidth_gbps`: a device-to-device copy timed by :func:`time_fn` (3 warm-up copies,
  ``reps`` synchronised repetitions, median): the roofline bandwidth.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

Clock = Callable[[], float]


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
    """Median, min and max per call of repetitions that took ``samples_us`` each and made ``calls`` calls."""
    if not samples_us:
        raise ValueError("no samples")
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
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


def host_call_us(fn: Callable[[], Any], clock: Clock = time.perf_counter) -> tuple[float, Any]:
    """(host-clock microseconds of one call of ``fn``, what it returned)."""
    t0 = clock()
    out = fn()
    return (clock() - t0) * 1e6, out


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


def burst_us(run: Callable[[], Any], n: int, warmup: int = 0, device: torch.device | str | None = None,
             clock: Clock = time.perf_counter) -> float:
    """Mean microseconds per call of ``n`` back-to-back calls of ``run`` (after ``warmup`` untimed calls
    and a synchronisation): one CUDA event pair around all of them, or the host clock without CUDA."""
    for _ in range(warmup):
        run()
    if not torch.cuda.is_available():
        return host_call_us(lambda: [run() for _ in range(n)], clock)[0] / n
    if warmup:
        torch.cuda.synchronize(device)
    start, end = _event(), _event()
    start.record()
    for _ in range(n):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / n


def _warm_up(fn: Callable[[], Any], warmup: int, device) -> None:
    """``warmup`` calls (at least one) on a side stream, as CUDA-graph capture requires."""
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)


def _capture(fn: Callable[[], Any], device) -> tuple[torch.cuda.CUDAGraph | None, str | None]:
    """``fn`` captured in a CUDA graph and replayed once, or (None, why not)."""
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize(device)
        g.replay()
        torch.cuda.synchronize(device)
        return g, None
    except Exception as exc:  # capture is best effort: report why and time eagerly
        torch.cuda.synchronize(device)
        return None, _one_line(exc)


def _event_samples_us(run: Callable[[], Any], reps: int, sync_each: bool, device) -> list[float]:
    """Microseconds of each of ``reps`` calls of ``run``, one CUDA event pair around each."""
    events = [(_event(), _event()) for _ in range(reps)]
    for start, end in events:
        start.record()
        run()
        end.record()
        if sync_each:
            end.synchronize()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) * 1e3 for s, e in events]


def time_fn(
    fn: Callable[[], Any],
    *,
    calls: int = 1,
    warmup: int = 3,
    min_reps: int = 20,
    max_reps: int = 200,
    target_ms: float = 100.0,
    use_graph: bool = True,
    sync_each: bool = False,
    device: torch.device | str | None = None,
    clock: Clock = time.perf_counter,
) -> Timing:
    """Median/min/max microseconds per call of ``fn`` (which performs ``calls`` calls); see the module doc."""
    if not torch.cuda.is_available():
        return _time_cpu(fn, calls=calls, warmup=warmup, reps=min_reps, clock=clock)
    _warm_up(fn, warmup, device)
    graph, graph_error = _capture(fn, device) if use_graph else (None, None)
    run = graph.replay if graph is not None else fn
    est_ms = max(burst_us(run, 3, device=device) / 1e3, 1e-3)
    reps = int(min(max(min_reps, target_ms / est_ms), max_reps))
    samples = _event_samples_us(run, reps, sync_each, device)
    used_graph = graph is not None
    del graph, run
    return summarize(samples, calls, used_graph, graph_error)


def _time_cpu(fn: Callable[[], Any], *, calls: int, warmup: int, reps: int, clock: Clock) -> Timing:
    """``warmup`` calls, then ``reps`` host-clock repetitions (no CUDA device)."""
    for _ in range(warmup):
        fn()
    samples = [host_call_us(fn, clock)[0] for _ in range(reps)]
    return summarize(samples, calls, graph=False, graph_error="no CUDA device")


def copy_bandwidth_gbps(nbytes: int = 2 << 30, reps: int = 10, device: str = "cuda") -> dict[str, float]:
    """Copy of ``nbytes`` on ``device``: GB/s counting bytes read + bytes written, from the median (``gbps``)
    and the fastest (``max_gbps``) of ``reps`` synchronised repetitions after 3 warm-up copies.
    ``bytes`` is the buffer size (half the bytes moved)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.random_(0, 255)
    dst = torch.empty_like(src)
    t = time_fn(partial(dst.copy_, src), warmup=3, min_reps=reps, max_reps=reps, use_graph=False, sync_each=True,
                device=device if torch.cuda.is_available() else None)
    del src, dst
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    median_s = t.median_us * 1e-6
    return {"gbps": 2 * nbytes / median_s / 1e9, "max_gbps": 2 * nbytes / (t.min_us * 1e-6) / 1e9,
            "bytes": nbytes, "median_s": median_s, "reps": t.reps}
