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
    torch.save({"method": "rotatekv", "model_fingerprint": calibration.model_fingerprint(model),
                "permutations": perms, "head_group": 4}, path)
    return perms


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
    x = inputs(40)
    _, ref = generate(model, x, oc.make_cache(model, "fp16"), 10)
    cache = oc.make_cache(model, "rotatekv", calibration="identity", no_quant=True, quantized_prefill=True,
                          residual_length=16)
    _, got = generate(model, x, cache, 10)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


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
    path = calibration.calibration_path(data["model_fingerprint"], tmp_path)
    assert data["path"] == str(path) and path.is_file()


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
    model, _ = llama()  # 2 KV heads
    with pytest.raises(MethodConfigError, match="multiple of head_group=4"):
        oc.make_cache(model, "rotatekv", calibration="identity")
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


def test_cli_calibrates_a_local_model(tmp_path, monkeypatch):
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


def test_llava_next_language_model_is_supported(monkeypatch):
    import tiny_models

    monkeypatch.setitem(tiny_models._TEXT, "num_key_value_heads", 4)
    model, inputs = tiny_models.llava_next()
    x = inputs(40)
    _, ref = generate(model, x, oc.make_cache(model, "fp16"), 10)
    cache = oc.make_cache(model, "rotatekv", calibration="identity", no_quant=True, quantized_prefill=True,
                          residual_length=16)
    _, got = generate(model, x, cache, 10)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
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
    other = tmp_path / "other"
    assert main([*run, "--results", str(other)]) == 2  # one clear error before any item
    assert str(other / "calibration") in capsys.readouterr().err
    assert not list(other.glob("runs/*/records.jsonl"))
