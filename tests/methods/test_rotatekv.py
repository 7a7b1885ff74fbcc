"""RotateKV: exact pre-RoPE transform path, massive-activation sinks, calibration store and CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import generate, llama, qwen3

import oscar_core as oc
from oscar_core import calibration
from oscar_core.hadamard import hadamard_matrix
from oscar_core.methods import MethodConfigError
from oscar_core.methods.rotatekv import massive_activation_tokens

KV4 = dict(num_key_value_heads=4)  # the grouped-head rotation needs a multiple of 4 KV heads


class ByteTokenizer:
    """Enough of a tokenizer for calibrate_rotatekv: bytes modulo the vocabulary."""

    def __call__(self, text, return_tensors="pt", add_special_tokens=False):
        return {"input_ids": torch.tensor([[3 + b % 200 for b in text.encode()]])}


def _random_calibration(model, path, seed=0):
    from oscar_core.model import inspect_model

    info = inspect_model(model)
    g = torch.Generator().manual_seed(seed)
    hd = info.num_kv_heads * info.head_dim
    perms = torch.stack([torch.randperm(hd, generator=g) for _ in range(info.num_layers)])
    torch.save({"method": "rotatekv", "format_version": calibration.FORMAT_VERSION, "permutations": perms,
                "model_fingerprint": calibration.model_fingerprint(model), "head_group": 4}, path)
    return perms


def _assert_unquantized_transform_path_exact(model, x, new_tokens: int = 10):
    """Generate through rotatekv with the quantizer off (identity calibration, quantized prefill: every
    token goes through undo-RoPE, rotate, permute and back): the logits are the fp16 cache's. Returns the cache."""
    _, ref = generate(model, x, oc.make_cache(model, "fp16"), new_tokens)
    cache = oc.make_cache(model, "rotatekv", calibration="identity", no_quant=True, quantized_prefill=True,
                          residual_length=16)
    _, got = generate(model, x, cache, new_tokens)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    return cache


@pytest.mark.parametrize("build", [llama, qwen3], ids=["llama", "qwen3"])
def test_transform_path_reproduces_the_model_without_quantization(build, tmp_path):
    model, inputs = build(**KV4)
    x = inputs(40, batch=2)
    x["attention_mask"][1, :6] = 0  # left padding: positions are counted within each sequence
    _, ref = generate(model, x, oc.make_cache(model, "fp16"), 20)
    path = tmp_path / "calib.pt"
    _random_calibration(model, path)
    # Quantized prefill: even the prompt attends through undo-RoPE, rotate, permute, and back.
    cache = oc.make_cache(model, "rotatekv", calibration=str(path), no_quant=True, quantized_prefill=True,
                          residual_length=16)
    _, got = generate(model, x, cache, 20)
    assert cache.layers[0].k.n_units[0] >= 3
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    # With the quantizer on, the numbers do change (this is not secretly the fp16 path).
    _, quant = generate(model, x, oc.make_cache(model, "rotatekv", calibration=str(path), residual_length=16), 20)
    assert not torch.allclose(quant, ref, atol=1e-3)


def test_llama3_rope_scaling_is_undone_exactly():
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model, inputs = llama(rope_parameters=rope, **KV4)
    _assert_unquantized_transform_path_exact(model, inputs(40))


def test_sinks_are_the_massive_activation_tokens_kept_in_full_precision():
    model, inputs = llama(**KV4)
    with torch.no_grad():
        model.model.embed_tokens.weight[7, 5] = 300.0  # a "massive activation" token
    x = inputs(45, batch=2)
    x["input_ids"][0, [4, 33]] = 7
    x["input_ids"][1, 20] = 7
    x["attention_mask"][1, :3] = 0
    cache = oc.make_cache(model, "rotatekv", calibration="identity", residual_length=16)
    with torch.no_grad():
        out = model(**x, output_hidden_states=True)  # hidden_states[i] is the input of layer i
        model(**x, past_key_values=cache)  # the prefill commits the prompt (quantizes 32 tokens)
        dense = oc.make_cache(model, "fp16")
        model(**x, past_key_values=dense)
    pads = [0, 3]
    for i, layer in enumerate(cache.layers):
        for b in range(2):
            expected = massive_activation_tokens(out.hidden_states[i][b, pads[b]:], 20)
            sinks = layer.state.per_seq[b]["sinks"]
            assert torch.equal(sinks, expected)
            assert 0 < sinks.numel() <= 20
        # Sinks that fell into quantized blocks are overrides: exactly the model's keys and values.
        k_att, v_att = layer._timeline(layer.k), layer._timeline(layer.v)
        for b, p in zip(layer.k.ov_rows, layer.k.ov_pos, strict=True):
            t = pads[b] + p
            torch.testing.assert_close(k_att[b, :, t], dense.layers[i].keys[b, :, t], rtol=1e-5, atol=1e-5)
            v_rot = cache.spec.values_to_cache(dense.layers[i].values)  # rotatekv caches V/O-rotated values
            torch.testing.assert_close(v_att[b, :, t], v_rot[b, :, t], rtol=1e-5, atol=1e-5)
        quantized = layer.k.n_units[0] * layer.k.unit
        assert sorted(p for b, p in zip(layer.k.ov_rows, layer.k.ov_pos, strict=True) if b == 0) == [
            p for p in layer.state.per_seq[0]["sinks"].tolist() if p < quantized]
    # Layer 0's input is the embeddings: the planted token's positions are sinks of both sequences.
    assert {4, 33} <= set(cache.layers[0].state.per_seq[0]["sinks"].tolist())
    assert 20 - 3 in cache.layers[0].state.per_seq[1]["sinks"].tolist()


def test_calibration_sorts_rotated_pre_rope_channel_sums(tmp_path):
    model, _ = llama(**KV4)
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 6)
    data = calibration.calibrate_rotatekv(model, ByteTokenizer(), text, seq_len=100, out_dir=tmp_path)
    # Independent check: pre-RoPE keys straight from k_proj, dense 4D-wide Hadamard, signed channel sums.
    ids = ByteTokenizer()(text.read_text())["input_ids"][0]
    captured = {}
    hooks = [layer.self_attn.k_proj.register_forward_hook(
        lambda m, a, out, i=i: captured.setdefault(i, []).append(out.detach())) for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for s in range(0, ids.numel(), 100):
            model(ids[None, s : s + 100])
    for h in hooks:
        h.remove()
    h256 = hadamard_matrix(256)
    for i in range(2):
        k = torch.cat(captured[i], dim=1)[0]  # [tokens, H*D] pre-RoPE
        sums = (k @ h256).sum(dim=0)
        torch.testing.assert_close(data["channel_sums"][i], sums, rtol=1e-3, atol=1e-3)
        assert torch.equal(data["permutations"][i], torch.sort(data["channel_sums"][i].double()).indices) or \
            torch.all(torch.diff(sums[data["permutations"][i]]) >= -1e-3)
    assert data["n_tokens"] == ids.numel()
    path = calibration.calibration_path(data["model_fingerprint"], tmp_path, head_group=4)
    assert data["path"] == str(path) and path.is_file() and data["head_group"] == 4  # the default for 4 KV heads


def test_calibration_is_found_by_fingerprint_and_never_mixed_up(tmp_path, monkeypatch):
    model, inputs = llama(**KV4)
    monkeypatch.setenv("OSCAR_EVAL_CALIBRATION_DIR", str(tmp_path / "store"))
    with pytest.raises(MethodConfigError, match="oscar-eval calibrate rotatekv"):
        oc.make_cache(model, "rotatekv")
    text = tmp_path / "c.txt"
    text.write_text("calibration text " * 20)
    data = calibration.calibrate_rotatekv(model, ByteTokenizer(), text, seq_len=64)
    cache = oc.make_cache(model, "rotatekv")  # found in the store by the model's fingerprint
    assert torch.equal(cache.layers[1].state.shared["perm"], data["permutations"][1])
    # The fingerprint ignores the V/O rotation (prepare_model changes v/o weights in place) ...
    assert calibration.model_fingerprint(model) == data["model_fingerprint"]
    # ... but another model (different weights) never uses this calibration.
    other, _ = llama(**KV4)
    with torch.no_grad():
        other.model.layers[0].self_attn.k_proj.weight.mul_(1.01)
    assert calibration.model_fingerprint(other) != data["model_fingerprint"]
    with pytest.raises(MethodConfigError, match="belongs to another model"):
        oc.make_cache(other, "rotatekv", calibration=data["path"])
    with pytest.raises(MethodConfigError, match="oscar-eval calibrate"):
        oc.make_cache(other, "rotatekv")


def test_clear_errors_for_unsupported_models():
    model, _ = llama()  # 2 KV heads of head_dim 64
    with pytest.raises(MethodConfigError, match=r"head_group=4 does not fit 2 KV heads.*works here: head_group=1, 2 "
                                                r"\(default for this model: 2\)"):
        oc.make_cache(model, "rotatekv", calibration="identity", head_group=4)
    from tiny_models import qwen3_vl

    vl, _ = qwen3_vl()
    # Enough KV heads are not the problem there: multimodal RoPE is refused at make_cache.
    vl.config.text_config.num_key_value_heads = 4
    with pytest.raises(MethodConfigError, match="M-RoPE"):
        oc.make_cache(vl, "rotatekv", calibration="identity")


def test_standalone_round_trip_needs_identity_and_recovers_the_keys():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 8, 256, 128, generator=g)
    with pytest.raises(MethodConfigError, match="identity"):
        oc.reference.roundtrip_keys(oc.get_method("rotatekv"), k)
    exact = oc.reference.roundtrip_keys(oc.get_method("rotatekv", calibration="identity", no_quant=True), k)
    torch.testing.assert_close(exact, k, rtol=1e-4, atol=1e-4)
    spec = oc.get_method("rotatekv", calibration="identity")
    rel = (oc.reference.roundtrip_keys(spec, k) - k).norm() / k.norm()
    assert 0.05 < rel < 0.6
    assert spec.bits_per_element(32768, 8, 128) == pytest.approx(2.25 + 20 * 16 / 32768)  # T mod R = 0: no window


def _saved_model_and_text(tmp_path):
    """A tiny Llama saved under tmp_path/m (with the smoke tokenizer) and a calibration text file."""
    from oscar_eval.smoke import build_tokenizer

    tok = build_tokenizer()
    model, _ = llama(vocab_size=len(tok), **KV4)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    text = tmp_path / "c.txt"
    text.write_text("some calibration text, not evaluation data. " * 10)
    return model, text


def test_cli_calibrates_a_local_model(tmp_path, monkeypatch, capsys):
    from oscar_eval.cli import main

    model, text = _saved_model_and_text(tmp_path)
    out = tmp_path / "calib"
    rc = main(["calibrate", "rotatekv", "--model", str(tmp_path / "m"), "--text", str(text), "--out", str(out),
               "--device", "cpu", "--dtype", "float32", "--seq-len", "128"])
    assert rc == 0
    files = list(out.glob("rotatekv-*.pt"))
    assert len(files) == 1
    monkeypatch.setenv("OSCAR_EVAL_CALIBRATION_DIR", str(out))
    cache = oc.make_cache(model, "rotatekv")  # the in-memory model has the same fingerprint
    assert "perm" in cache.layers[0].state.shared
    assert main(["calibrate", "rotatekv", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "missing.txt")]) == 2
    # Overrides as `run --set` takes them; an unusable one names the values that work on this model.
    base = ["calibrate", "rotatekv", "--model", str(tmp_path / "m"), "--text", str(text), "--out", str(out),
            "--device", "cpu", "--dtype", "float32", "--seq-len", "128"]
    capsys.readouterr()
    assert main([*base, "--set", "head_group=3"]) == 2
    assert "works here: head_group=1, 2, 4" in capsys.readouterr().err
    assert main([*base, "--set", "rotatekv.head_group=2"]) == 0
    assert "head_group=2" in capsys.readouterr().out
    assert sorted(f.name.rsplit("-", 1)[-1] for f in out.glob("rotatekv-*.pt")) == ["hg2.pt", "hg4.pt"]
    assert "perm" in oc.make_cache(model, "rotatekv", head_group=2).layers[0].state.shared


def test_llava_next_language_model_is_supported(monkeypatch):
    import tiny_models

    monkeypatch.setitem(tiny_models._TEXT, "num_key_value_heads", 4)
    model, inputs = tiny_models.llava_next()
    cache = _assert_unquantized_transform_path_exact(model, inputs(40))
    assert cache.layers[0].state.per_seq[0]["sinks"].numel() > 0  # captured through the LLaVA wrapper


def test_calibration_lives_next_to_the_results_store(tmp_path, monkeypatch, capsys):
    import os

    from oscar_eval.cli import main

    monkeypatch.delenv("OSCAR_EVAL_CALIBRATION_DIR", raising=False)
    _, text = _saved_model_and_text(tmp_path)
    res = tmp_path / "res"
    assert main(["calibrate", "rotatekv", "--model", str(tmp_path / "m"), "--text", str(text), "--results", str(res),
                 "--device", "cpu", "--dtype", "float32", "--seq-len", "128"]) == 0
    assert len(list((res / "calibration").glob("rotatekv-*.pt"))) == 1
    assert "OSCAR_EVAL_CALIBRATION_DIR" not in os.environ  # set for the command only
    data = Path(__file__).resolve().parents[2] / "oscar_eval" / "data" / "longbench_e_smoke"
    run = ["run", "longbench", "--model", str(tmp_path / "m"), "--data-dir", str(data), "--method", "rotatekv",
           "--subset", "qasper_e", "--limit", "1", "--device", "cpu", "--dtype", "float32", "--no-progress"]
    assert main([*run, "--results", str(res)]) == 0  # found in <results>/calibration
    assert "1 items, 0 failed" in capsys.readouterr().out
    import json

    (manifest,) = res.glob("runs/*/manifest.json")
    params = json.loads(manifest.read_text())["method"]["params"]
    assert (params["head_group"], params["group_size"]) == (4, 64)  # provenance: the values the cache used
    other = tmp_path / "other"
    assert main([*run, "--results", str(other)]) == 2  # one clear error before any item
    assert str(other / "calibration") in capsys.readouterr().err
    assert not list(other.glob("runs/*/records.jsonl"))


# -- real-model layouts: exact fingerprint indices, defaults resolved for the model --------------------
class _OneTensor(torch.nn.Module):
    """A "decoder" whose only key-determining weight has more than 2^24 elements."""

    def __init__(self, numel: int):
        super().__init__()
        from transformers import LlamaConfig

        self.config = LlamaConfig(hidden_size=64, num_attention_heads=1, num_hidden_layers=1)
        self.embed_tokens = torch.nn.Parameter(torch.zeros(numel), requires_grad=False)


def test_fingerprint_samples_exact_indices_past_2_24():
    n = 2**24 + 1001  # a float32 index cannot address most elements past 2^24
    idx = calibration.sample_indices(n)
    k = 4096
    assert idx.dtype == torch.int64 and idx.numel() == k
    assert idx.tolist() == [i * (n - 1) // (k - 1) for i in range(k)]  # exact integer arithmetic
    assert idx[0] == 0 and idx[-1] == n - 1 and torch.all(torch.diff(idx) > 0)
    assert calibration.sample_indices(10).tolist() == list(range(10))  # small tensors: every element
    assert calibration.sample_indices(1).tolist() == [0]

    module = _OneTensor(n)
    before = calibration.model_fingerprint(module)
    assert calibration.model_fingerprint(module) == before  # deterministic
    with torch.no_grad():
        module.embed_tokens[idx[1] + 1] = 1.0  # between two samples: not part of the fingerprint
    assert calibration.model_fingerprint(module) == before
    for i in (int(idx[2048]), n - 1):  # a sampled element past 2^24, and the very last one
        with torch.no_grad():
            module.embed_tokens[i] = 0.5
        after = calibration.model_fingerprint(module)
        assert after != before
        before = after


@pytest.mark.parametrize(("kv_heads", "head_dim", "head_group", "group_size"), [
    (1, 256, 1, 128),  # Gemma 3 270M: two groups per head
    (2, 64, 2, 64),  # Qwen2.5-Coder-0.5B
    (2, 128, 2, 128),  # Qwen2.5-Coder-1.5B
    (3, 64, 1, 64),  # SmolLM2-135M: 3*64 is no Hadamard size, so 1 (not 3)
    (6, 128, 2, 128),
    (8, 128, 4, 128),  # the paper's setting
    (32, 128, 4, 128),
])
def test_defaults_adapt_to_the_model(kv_heads, head_dim, head_group, group_size):
    spec = oc.get_method("rotatekv")
    resolved = spec.resolve_for_model(kv_heads, head_dim)
    assert (resolved.head_group, resolved.group_size) == (head_group, group_size)
    resolved.check_model(kv_heads, head_dim)
    spec.check_model(kv_heads, head_dim)  # an unresolved spec is judged by its resolved values
    assert (kv_heads * head_dim) % group_size == 0 and (head_group * head_dim) % group_size == 0
    # Explicit values are kept, whatever the model.
    explicit = oc.get_method("rotatekv", head_group=1, group_size=32).resolve_for_model(kv_heads, head_dim)
    assert (explicit.head_group, explicit.group_size) == (1, 32)


def test_unusable_explicit_values_name_the_values_that_work():
    with pytest.raises(MethodConfigError, match=r"head_group=3 does not fit 3 KV heads.*works here: head_group=1 "):
        oc.get_method("rotatekv", head_group=3).check_model(3, 64)
    with pytest.raises(MethodConfigError, match=r"works here: head_group=1, 2, 4, 8 \(default for this model: 4\)"):
        oc.get_method("rotatekv", head_group=16).check_model(8, 128)
    oc.get_method("rotatekv", head_group=8).check_model(8, 128)  # above the default's 4, but a valid choice
    with pytest.raises(MethodConfigError, match=r"group_size=128 does not divide num_kv_heads\*head_dim \(192\); "
                                                r"works here: group_size=8, 12, 16, 24, 32, 48, 64, 96, 192 "
                                                r"\(default for this model: 64\)"):
        oc.get_method("rotatekv", group_size=128).check_model(3, 64)


def test_make_cache_builds_with_the_resolved_spec():
    model, inputs = llama(hidden_size=192, num_attention_heads=6, num_key_value_heads=3)  # SmolLM2: 3 KV heads, D=64
    cache = oc.make_cache(model, "rotatekv", calibration="identity", residual_length=16)
    assert (cache.spec.head_group, cache.spec.group_size) == (1, 64)
    assert cache.spec.to_dict()["params"]["head_group"] == 1
    _, logits = generate(model, inputs(40), cache, 4)
    assert torch.isfinite(logits).all()
    # The stored keys use those groups: 3 groups of 64 per token of 3*64 channels.
    assert cache.layers[0].k.units["scale"].shape[-1] == 3
    assert oc.make_cache(model, "fp16").spec.name == "fp16"


def test_calibration_is_keyed_by_head_group(tmp_path, monkeypatch):
    model, _ = llama(**KV4)  # default head_group 4
    store = tmp_path / "store"
    monkeypatch.setenv("OSCAR_EVAL_CALIBRATION_DIR", str(store))
    text = tmp_path / "c.txt"
    text.write_text("calibration text " * 20)
    one = calibration.calibrate_rotatekv(model, ByteTokenizer(), text, seq_len=64, head_group=1)
    assert Path(one["path"]).name.endswith("-hg1.pt") and one["head_group"] == 1
    with pytest.raises(MethodConfigError, match=r"calibration for head_group=4 \(the value this cache uses\) is "
                                                r"not at .*found head_group=1 \("):
        oc.make_cache(model, "rotatekv")
    cache = oc.make_cache(model, "rotatekv", head_group=1)
    assert torch.equal(cache.layers[0].state.shared["perm"], one["permutations"][0])
    with pytest.raises(MethodConfigError, match="computed with head_group=1, this cache uses head_group=4"):
        oc.make_cache(model, "rotatekv", calibration=one["path"])
    four = calibration.calibrate_rotatekv(model, ByteTokenizer(), text, seq_len=64)
    assert four["head_group"] == 4 and Path(one["path"]).is_file()  # both kept side by side
    assert not torch.equal(four["permutations"], one["permutations"])  # the rotation enters the sort
    assert torch.equal(oc.make_cache(model, "rotatekv").layers[1].state.shared["perm"], four["permutations"][1])
    # A format-1 file (float32 fingerprint indices) is refused with a clear reason.
    old = tmp_path / "old.pt"
    torch.save({**{k: v for k, v in four.items() if k != "path"}, "format_version": 1}, old)
    with pytest.raises(MethodConfigError, match="has format 1.*recalibrate"):
        oc.make_cache(model, "rotatekv", calibration=str(old))
