"""What one decode step of each packed cache does on the host, per layer and step (oscar-eval issue 15).

A random Llama of SmolLM2-135M's attention shape (30 layers, 9 query / 3 KV heads of 64) generates
``--new`` tokens after a ``--prompt``-token prompt (batch 1, and batch 4 left-padded by ``PADS``), once per
arm: ``fp16`` (transformers' dynamic cache), ``oscar:fallback`` (the kernel layout with the PyTorch
fallbacks: on CPU the same Python path as on CUDA except the extension's calls), ``oscar:off`` and
``kivi:off`` (the reference packed layer), plus ``oscar:on`` on a CUDA device, and on a CPU in bf16/fp16 with a
GQA group the kernel serves (e.g. ``--q-heads 12``) ``oscar:stub-kernels``: the CUDA kernels' host path, with
a stand-in extension (:class:`StubExtension`) whose ops do nothing. Counted inside the cache's
share of each decode step, i.e. ``cache.update`` and the attention function of every layer (the model's
projections, norms and MLPs are left out), and divided by the layers:

* ``py_calls``: Python and C function calls (cProfile, enabled only inside those calls);
* ``aten``/``aten_top``: aten ops recorded by torch.profiler (all, and those not nested in another aten op:
  roughly the kernels launched on a GPU);
* ``sync``, ``host_tensor``, ``device_move``: calls that read device data on the host, build tensors from
  host data, or move a tensor to a device (:mod:`oscar_core.cache.host_sync`);
* ``host_us``: host time per layer in those calls (on CUDA the launch overhead; on CPU it includes the math).

Steps are split into *plain* steps and *flush* steps (a layer quantized a block of keys in that step).

    OMP_NUM_THREADS=1 python scripts/decode_host_work.py --out results/cpu/decode_host_work.json
    OMP_NUM_THREADS=1 python scripts/decode_host_work.py --dtype bfloat16 --q-heads 12 --arms oscar:stub-kernels
    python scripts/decode_host_work.py --device cuda --dtype bfloat16 --out results/gpu/decode_host_work.json

On CUDA ``--sync-debug`` also runs each arm under ``torch.cuda.set_sync_debug_mode("warn")`` and counts the
warnings (the C++ side's synchronisations, which the Python watch cannot see).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import statistics
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import oscar_core as oc  # noqa: E402
from oscar_core.cache.host_sync import KINDS, HostSyncWatch  # noqa: E402
from oscar_core.cache.layer import PackedKVLayer  # noqa: E402

warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*")

PADS = {1: [0], 4: [0, 23, 57, 101]}  # left padding per sequence: staggered windows, one flushes mid-run
ARMS = ["fp16", "oscar:fallback", "oscar:off", "kivi:off"]
COLUMNS = ["py_calls", "aten", "aten_top", *KINDS, "host_us"]
_SELF_CALLS = {"<method 'disable' of '_lsprof.Profiler' objects>", "<method 'enable' of '_lsprof.Profiler' objects>"}


def build_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=args.q_heads * args.head_dim, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.q_heads,
                         num_key_value_heads=args.kv_heads, head_dim=args.head_dim, max_position_embeddings=4096)
    return LlamaForCausalLM(config).eval().to(device=args.device, dtype=getattr(torch, args.dtype))


def make_inputs(batch: int, prompt: int, device: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 200, (batch, prompt), generator=g)
    mask = torch.ones_like(ids)
    for b, pad in enumerate(PADS[batch]):
        mask[b, :pad] = 0
        ids[b, :pad] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


class StubExtension:
    """Stands in for the CUDA extension on a CPU (arm ``oscar:stub-kernels``): every op is one trivial aten op
    where the real one launches one kernel, so the host path of the CUDA kernels can be counted without a
    GPU. Its numbers are meaningless (the attention outputs zeros); only the counts are of interest."""

    def pack_keys(self, k, data, norm, rotate):
        data.zero_()

    def pack_values(self, v, data):
        data.zero_()

    def append_window(self, k, v, res_k, res_v, slots, rotate):
        slots.add_(0)

    def decode(self, q, kdata, vdata, norms, qlens, res_k, res_v, rlens, pm, pl, po, out, *config):
        out.zero_()


@contextmanager
def arm_kernels(arm: str):
    """``oscar:stub-kernels``: the kernel ops see :class:`StubExtension` as the built extension."""
    if not arm.endswith(":stub-kernels"):
        yield
        return
    from oscar_core.kernels import ops

    real, stub = ops.cuda_extension, StubExtension()
    ops.cuda_extension = lambda *tensors, force_fallback: stub
    try:
        yield
    finally:
        ops.cuda_extension = real


def make_arm_cache(model, arm: str):
    method, _, kernels = arm.partition(":")
    if kernels == "stub-kernels":
        kernels = "fallback"
    return oc.make_cache(model, method, kernels=kernels) if kernels else oc.make_cache(model, method)


def flushed_blocks(cache) -> int:
    """Key blocks quantized so far, over all packed layers (a change marks a flush step)."""
    return sum(sum(layer.k.n_units) for layer in cache.layers if isinstance(layer, PackedKVLayer))


@contextmanager
def instrument(model, cache, enter, leave, step_begin, step_end):
    """Call ``enter``/``leave`` around every layer's ``cache.update`` and attention call, and
    ``step_begin``/``step_end`` around every forward pass."""
    from transformers.modeling_utils import AttentionInterface

    name = model.config._attn_implementation
    mapping = AttentionInterface._global_mapping
    attention = mapping[name]

    def scoped(fn):
        def call(*a, **k):
            enter()
            try:
                return fn(*a, **k)
            finally:
                leave()
        return call

    forward = model.forward

    def stepped(*a, **k):
        step_begin()
        out = forward(*a, **k)
        step_end()
        return out

    cache.update = scoped(cache.update)
    mapping[name] = scoped(attention)
    model.forward = stepped
    try:
        yield
    finally:
        mapping[name] = attention
        del cache.update, model.forward


class StepLog:
    """Per decode step: counters, and whether a flush happened (step 0 is the prompt, not logged)."""

    def __init__(self, cache):
        self.cache = cache
        self.step = -1
        self.steps: list[Counter] = []
        self.flush: list[bool] = []
        self._blocks = 0

    def begin(self) -> None:
        self.step += 1
        self._blocks = flushed_blocks(self.cache)
        if self.step:
            self.steps.append(Counter())

    def end(self) -> None:
        if self.step:
            self.flush.append(flushed_blocks(self.cache) != self._blocks)

    @property
    def decoding(self) -> bool:
        return self.step > 0


def generate(model, x, cache, new: int):
    return model.generate(**x, past_key_values=cache, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                          pad_token_id=0)


def pass_calls_and_syncs(model, x, arm, new) -> tuple[StepLog, Counter, str]:
    """cProfile and the host-sync watch inside the cache's calls."""
    cache = make_arm_cache(model, arm)
    log = StepLog(cache)
    prof: list[cProfile.Profile] = []
    watch = HostSyncWatch()
    scope = []

    def enter():
        if not log.decoding:
            return
        if not prof or len(prof) < log.step:
            prof.append(cProfile.Profile())
        scope.append(watch.watching())
        scope[-1].__enter__()
        before = dict(watch.counts)
        scope.append(before)
        prof[-1].enable()

    def leave():
        if not log.decoding:
            return
        prof[-1].disable()
        before = scope.pop()
        scope.pop().__exit__(None, None, None)
        for kind in KINDS:
            log.steps[-1][kind] += watch.counts[kind] - before.get(kind, 0)

    with watch, instrument(model, cache, enter, leave, log.begin, log.end):
        out = generate(model, x, cache, new)
    for counter, p in zip(log.steps, prof, strict=True):
        p.create_stats()
        counter["py_calls"] = sum(v[1] for k, v in p.stats.items() if k[2] not in _SELF_CALLS)
    sites = Counter()
    for (kind, name, site), n in watch.sites.items():
        sites[f"{kind} {name} @ {site}"] += n
    return log, sites, hashlib.sha256(out.cpu().numpy().tobytes()).hexdigest()[:16]


def pass_aten(model, x, arm, new) -> tuple[StepLog, Counter]:
    """torch.profiler: aten ops nested in the cache's calls."""
    cache = make_arm_cache(model, arm)
    log = StepLog(cache)
    ranges = []

    def enter():
        if log.decoding:
            ranges.append(torch.profiler.record_function(f"oscar_scope#{log.step}"))
            ranges[-1].__enter__()

    def leave():
        if log.decoding:
            ranges.pop().__exit__(None, None, None)

    acts = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as prof, instrument(model, cache, enter, leave, log.begin, log.end):
        generate(model, x, cache, new)
    top_names = Counter()

    def walk(event, nested: bool, counter: Counter):
        for child in event.cpu_children:
            is_aten = child.name.startswith("aten::")
            if is_aten:
                counter["aten"] += 1
                if not nested:
                    counter["aten_top"] += 1
                    top_names[child.name] += 1
            walk(child, nested or is_aten, counter)

    for event in prof.events():
        if event.name.startswith("oscar_scope#"):
            walk(event, False, log.steps[int(event.name.split("#")[1]) - 1])
    return log, top_names


def pass_host_time(model, x, arm, new, sync_debug: bool) -> tuple[StepLog, int]:
    """Host time inside the cache's calls (no patches); on CUDA optionally the sync-debug warnings."""
    cache = make_arm_cache(model, arm)
    log = StepLog(cache)
    cuda = x["input_ids"].is_cuda
    t0 = []

    def enter():
        t0.append(time.perf_counter())

    def leave():
        if log.decoding:
            log.steps[-1]["host_us"] += (time.perf_counter() - t0.pop()) * 1e6
        else:
            t0.pop()

    n_warn = 0
    with warnings.catch_warnings(record=True) as caught, instrument(model, cache, enter, leave, log.begin, log.end):
        warnings.simplefilter("always")
        if cuda and sync_debug:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            generate(model, x, cache, new)
        finally:
            if cuda and sync_debug:
                torch.cuda.set_sync_debug_mode(0)
                torch.cuda.synchronize()
        n_warn = sum("synchroniz" in str(w.message).lower() for w in caught)
    return log, n_warn


def per_layer(steps: list[Counter], flush: list[bool], want_flush: bool, layers: int) -> dict[str, float] | None:
    chosen = [c for c, f in zip(steps, flush, strict=True) if f == want_flush]
    if not chosen:
        return None
    return {col: statistics.mean(c[col] for c in chosen) / layers for col in COLUMNS}


def run_arm(model, args, arm: str, batch: int) -> dict:
    x = make_inputs(batch, args.prompt, args.device)
    with arm_kernels(arm):
        log_c, sites, tokens = pass_calls_and_syncs(model, x, arm, args.new)
        log_a, top = pass_aten(model, x, arm, args.new)
        log_t, sync_warnings = pass_host_time(model, x, arm, args.new, args.sync_debug)
    if not (log_c.flush == log_a.flush == log_t.flush):
        raise RuntimeError(f"{arm}: the passes flushed at different steps")
    steps = [Counter() for _ in log_c.steps]
    for log in (log_c, log_a, log_t):
        for merged, c in zip(steps, log.steps, strict=True):
            merged.update(c)
    return {
        "arm": arm, "batch": batch, "pads": PADS[batch], "decode_steps": len(steps), "flush_steps": sum(log_c.flush),
        "plain_per_layer": per_layer(steps, log_c.flush, False, args.layers),
        "flush_per_layer": per_layer(steps, log_c.flush, True, args.layers),
        "tokens_sha256_16": tokens, "sync_sites": dict(sites.most_common(20)),
        "top_aten_ops_per_layer_step": {k: round(v / (args.layers * len(steps)), 2) for k, v in top.most_common(25)},
        "sync_debug_warnings": sync_warnings if (args.device == "cuda" and args.sync_debug) else None,
    }


def format_table(rows: list[dict]) -> str:
    head = f"{'arm':<20}{'B':>3} {'steps':<8}" + "".join(f"{c:>12}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        for label in ("plain", "flush"):
            vals = r[f"{label}_per_layer"]
            if vals is None:
                continue
            n = r["flush_steps"] if label == "flush" else r["decode_steps"] - r["flush_steps"]
            lines.append(f"{r['arm']:<20}{r['batch']:>3} {label + ' ' + str(n):<8}"
                         + "".join(f"{vals[c]:>12.1f}" for c in COLUMNS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--q-heads", type=int, default=9)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--prompt", type=int, default=300)
    p.add_argument("--new", type=int, default=40)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], choices=sorted(PADS))
    p.add_argument("--arms", nargs="+", default=None, help=f"default: {' '.join(ARMS)} (+ oscar:on on CUDA)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sync-debug", action="store_true", help="CUDA: count torch.cuda sync-debug warnings too")
    p.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = p.parse_args(argv)
    if args.prompt <= max(max(PADS[b]) for b in args.batches):
        p.error(f"--prompt {args.prompt} must exceed the largest left padding")
    stub_ok = args.dtype != "float32" and args.q_heads % args.kv_heads == 0 and args.q_heads // args.kv_heads in (
        1, 2, 4, 8) and not args.device.startswith("cuda")
    arms = args.arms or ARMS + (["oscar:on"] if args.device.startswith("cuda") else []) + (
        ["oscar:stub-kernels"] if stub_ok else [])
    if any(a.endswith(":stub-kernels") for a in arms) and not stub_ok:
        p.error("--arms oscar:stub-kernels needs a CPU run, --dtype bfloat16/float16 and a GQA group of 1, 2, 4 "
                "or 8 (--q-heads / --kv-heads), where the CUDA path would run the decode kernel")
    model = build_model(args)
    rows = []
    with torch.no_grad():
        for batch in args.batches:
            for arm in arms:
                rows.append(run_arm(model, args, arm, batch))
                print(f"done {arm} B={batch}", file=sys.stderr)
    print(format_table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        meta.update(torch=torch.__version__, threads=torch.get_num_threads())
        args.out.write_text(json.dumps({"settings": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
