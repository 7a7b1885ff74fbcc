"""The one timing harness (oscar_eval.speed.timing) on a fake clock: how many calls it makes, what it
samples, the statistics it reports. The CUDA path runs against a fake ``torch.cuda`` whose GPU clock
advances only when work is launched, so no assertion depends on wall-clock time."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from oscar_eval.speed import timing as T


class FakeClock:
    """Host clock (seconds) that moves only when a fake call does ``advance``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _fn_taking(clock: FakeClock, seconds: list[float]):
    """A function whose k-th call takes ``seconds[k]``; ``fn.calls`` counts its calls."""

    def fn():
        clock.advance(seconds[fn.calls])
        fn.calls += 1
        return fn.calls

    fn.calls = 0
    return fn


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_summarize_per_call_statistics():
    t = T.summarize([30.0, 10.0, 20.0, 40.0], calls=2, graph=True, graph_error=None)
    assert (t.median_us, t.min_us, t.max_us) == (12.5, 5.0, 20.0)  # median of an even count: mean of the middle two
    assert (t.reps, t.calls_per_rep, t.graph, t.samples_us) == (4, 2, True, [15.0, 5.0, 10.0, 20.0])
    row = T.Timing(1.23456, 1.0, 2.0, 20, 1, False).as_row()
    assert row["median_us"] == 1.235 and {"median_us", "min_us", "max_us", "reps", "graph"} <= set(row)
    with pytest.raises(ValueError, match="no samples"):
        T.summarize([], calls=1, graph=False)
    with pytest.raises(ValueError, match="calls"):
        T.summarize([1.0], calls=0, graph=False)


def test_time_fn_on_cpu_warms_up_then_samples_each_repetition(no_cuda):
    clock = FakeClock()
    warm = [100.0, 100.0]  # warm-up calls are slow and must not be sampled
    timed = [0.5, 0.125, 0.25, 2.0, 0.375]
    fn = _fn_taking(clock, warm + timed)
    t = T.time_fn(fn, calls=2, warmup=2, min_reps=5, max_reps=50, target_ms=1e9, clock=clock)
    assert fn.calls == 7
    assert t.samples_us == [s * 1e6 / 2 for s in timed]
    assert (t.median_us, t.min_us, t.max_us) == (187500.0, 62500.0, 1e6)
    assert (t.reps, t.calls_per_rep, t.graph, t.graph_error) == (5, 2, False, "no CUDA device")


def test_burst_and_host_call_on_cpu(no_cuda):
    clock = FakeClock()
    fn = _fn_taking(clock, [8.0, 0.25, 0.5, 0.25, 0.5])
    assert T.burst_us(fn, 4, warmup=1, clock=clock) == 375000.0  # mean of the 4 after the warm-up
    assert fn.calls == 5
    fn = _fn_taking(clock, [0.125])
    assert T.host_call_us(fn, clock) == (125000.0, 1)


def test_copy_bandwidth_on_cpu_is_consistent_with_its_timing(no_cuda):
    bw = T.copy_bandwidth_gbps(1 << 16, reps=3, device="cpu")
    assert bw["bytes"] == 1 << 16 and bw["reps"] == 3
    assert bw["gbps"] == pytest.approx(2 * (1 << 16) / bw["median_s"] / 1e9)
    assert bw["max_gbps"] >= bw["gbps"]


class FakeCuda:
    """Just enough of ``torch.cuda`` for time_fn: a GPU clock (ms) advanced by launched work, events
    that read it, a graph that records launches during capture and replays them."""

    def __init__(self) -> None:
        self.gpu_ms = 0.0
        self.capturing: list[float] | None = None
        self.event_syncs = 0
        self.fail_capture = False
        fake = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.t: float | None = None

            def record(self) -> None:
                self.t = fake.gpu_ms

            def synchronize(self) -> None:
                fake.event_syncs += 1

            def elapsed_time(self, end: Event) -> float:
                return end.t - self.t

        class CUDAGraph:
            def __init__(self) -> None:
                self.launches: list[float] = []

            def replay(self) -> None:
                fake.gpu_ms += sum(self.launches)

        self.Event, self.CUDAGraph = Event, CUDAGraph

    def launch(self, ms: float) -> None:
        if self.capturing is not None:
            if self.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
            self.capturing.append(ms)
        else:
            self.gpu_ms += ms

    @contextlib.contextmanager
    def graph(self, g):
        self.capturing = g.launches
        try:
            yield
        finally:
            self.capturing = None

    def is_available(self) -> bool:
        return True

    def synchronize(self, device=None) -> None:
        pass

    def Stream(self, device=None):  # noqa: N802 - torch's name
        return SimpleNamespace(wait_stream=lambda other: None)

    def current_stream(self, device=None):
        return SimpleNamespace(wait_stream=lambda other: None)

    @contextlib.contextmanager
    def stream(self, s):
        yield


@pytest.fixture
def cuda(monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(T, "torch", SimpleNamespace(cuda=fake))
    return fake


def _kernel(cuda: FakeCuda, ms: float):
    def fn():
        fn.calls += 1
        cuda.launch(ms)

    fn.calls = 0
    return fn


def test_time_fn_on_cuda_replays_a_graph_and_sizes_the_repetitions(cuda):
    fn = _kernel(cuda, 2.0)  # 2 ms per invocation of fn, which makes 4 calls
    t = T.time_fn(fn, calls=4, warmup=3, min_reps=5, max_reps=40, target_ms=60.0)
    assert fn.calls == 3 + 1  # warm-up, then the capture; every later run is a replay
    assert t.graph and t.graph_error is None
    assert t.reps == 30  # 60 ms target / 2 ms per run, within [5, 40]
    assert t.samples_us == [500.0] * 30 and t.median_us == 500.0
    assert cuda.event_syncs == 1  # the estimate burst only: repetitions run back to back


def test_time_fn_on_cuda_clamps_repetitions_and_syncs_each_on_request(cuda):
    t = T.time_fn(_kernel(cuda, 2.0), min_reps=25, max_reps=25, target_ms=1e6, sync_each=True, use_graph=False)
    assert t.reps == 25 and not t.graph and t.graph_error is None
    assert cuda.event_syncs == 1 + 25
    assert T.time_fn(_kernel(cuda, 2.0), min_reps=7, max_reps=9, target_ms=0.0).reps == 7


def test_time_fn_on_cuda_times_eagerly_when_capture_fails(cuda):
    cuda.fail_capture = True
    fn = _kernel(cuda, 1.5)
    t = T.time_fn(fn, warmup=2, min_reps=20, max_reps=20)
    assert not t.graph and t.graph_error == "RuntimeError: operation not permitted when stream is capturing"
    assert fn.calls == 2 + 1 + 3 + 20  # warm-up, failed capture, estimate burst, repetitions
    assert t.median_us == 1500.0


def test_burst_on_cuda_is_the_mean_inside_one_event_pair(cuda):
    fn = _kernel(cuda, 0.5)
    assert T.burst_us(fn, 5, warmup=1) == 500.0
    assert fn.calls == 6
