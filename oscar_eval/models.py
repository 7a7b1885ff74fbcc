"""Model loading (local files only) and model runners that turn an item into a generation.

Runners are per modality: :class:`TextRunner` is implemented (LongBench-E); vision and audio runners
plug in behind the same ``generate(item, cache)`` call when OCRBench and MMAU-Pro land.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from oscar_eval.errors import UserError

# Never touch the network: set before transformers/huggingface_hub read their settings.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DTYPES = ("auto", "bfloat16", "float16", "float32")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def resolve_model_path(model: str | Path) -> Path:
    """A local folder, a .gguf file (or a folder holding one), the short name of an offline checkpoint
    (oscar_eval.checkpoints: converted once into a folder), or a repo id already in the Hugging Face
    cache (never downloaded)."""
    from oscar_eval import checkpoints

    converted = checkpoints.resolve(model)
    if converted is not None:
        return converted
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"model folder {p} has no config.json")
        return p.resolve()
    try:
        from huggingface_hub import snapshot_download

        # HF_HUB_CACHE is read here (not at import) so a cache chosen at run time is honoured.
        return Path(snapshot_download(str(model), local_files_only=True,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except Exception:  # noqa: BLE001 - any failure means "not available locally"
        known = ", ".join(checkpoints.CHECKPOINTS)
        raise UserError(
            f"model {str(model)!r} is not a folder, a .gguf file, a known offline checkpoint ({known}) nor in "
            f"the local Hugging Face cache; download it first (e.g. `hf download {model}`) or pass its folder "
            "with --model") from None


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: Path
    device: str
    dtype: str

    @property
    def architecture(self) -> str:
        archs = getattr(self.model.config, "architectures", None) or [type(self.model).__name__]
        return archs[0]

    def kv_shape(self) -> tuple[int, int]:
        """(num_kv_heads, head_dim) of the text decoder, for bits-per-element accounting."""
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        if not hasattr(cfg, "num_attention_heads") and hasattr(cfg, "get_text_config"):
            cfg = cfg.get_text_config()  # nested configs, e.g. Qwen3-Omni's thinker_config.text_config
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return int(kv), int(head_dim)


def load_model(model: str | Path, device: str = "auto", dtype: str = "auto",
               device_map: str | dict | None = None) -> LoadedModel:
    """``device_map`` (``"auto"``, ``"balanced"``, ... or a module -> device dict) spreads a model too
    large for one GPU over several: each decoder layer, and its KV cache layer, on its own device."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    from oscar_eval.vision import is_vision_language, load_vision_model

    if is_vision_language(path):  # Qwen-VL, LLaVA(-NeXT): model + processor (OCRBench)
        if device_map is not None:
            raise UserError("--device-map: not supported for vision-language models yet (one device)")
        return load_vision_model(path, device=device, dtype=dtype)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # device_map places weights directly on the GPU (no second full copy in host memory).
        from oscar_eval.audio import is_omni, load_omni_model

        if is_omni(AutoConfig.from_pretrained(path, local_files_only=True)):  # Qwen3-Omni (MMAU-Pro)
            if device_map is not None:
                raise UserError("--device-map: not supported for omni models yet (one device)")
            net = load_omni_model(path, device, torch_dtype)
        else:
            net = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, local_files_only=True,
                device_map=device_map if device_map is not None else (None if device == "cpu" else device))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from None
    net.eval()
    if device_map is not None:  # inputs go where the embeddings are (the first module of the map)
        device = str(net.get_input_embeddings().weight.device)
        if device == "meta":  # offloaded embeddings: accelerate's hooks bring them to the first GPU
            device = "cuda:0" if device_map != "cpu" and resolve_device("auto") == "cuda" else "cpu"
    return LoadedModel(net, tokenizer, path, device, str(torch_dtype).removeprefix("torch."))


def cache_kwarg() -> str:
    """Name of generate()'s cache argument: ``cache`` in newer transformers, else ``past_key_values``."""
    try:
        from transformers.generation import utils as gen_utils

        return "cache" if "cache" in getattr(gen_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"
    except ImportError:
        return "past_key_values"


@dataclass
class Generation:
    prediction: str
    input_tokens: int
    truncated: bool
    new_tokens: int
    prompt_sha256: str
    # Benchmarks that measure instead of generating (ppl): the runner's numbers, stored in the record and
    # handed to the benchmark's score() in place of the prediction.
    metrics: dict[str, Any] | None = None


class ModelRunner(Protocol):
    def generate(self, item: Any, cache: Any) -> Generation: ...


class TextRunner:
    """Causal-LM text generation with the LongBench protocol: middle truncation, optional chat template,
    greedy decoding, batch 1, the KV cache passed in as ``past_key_values``."""

    def __init__(self, loaded: LoadedModel, max_input_len: int = 32768, chat_template: bool = False) -> None:
        if max_input_len < 2:
            raise UserError(f"--max-input-len must be at least 2, got {max_input_len}")
        self.loaded = loaded
        self.max_input_len = max_input_len
        self.chat_template = chat_template
        tok = loaded.tokenizer
        if chat_template and not getattr(tok, "chat_template", None):
            raise UserError(f"--chat-template: the tokenizer of {loaded.path} has no chat template")
        newline = tok.encode("\n", add_special_tokens=False)
        self._newline_id = newline[-1] if newline else None

    def truncate(self, prompt: str) -> tuple[str, bool]:
        """Official LongBench middle truncation: keep the first and last max_input_len/2 tokens."""
        tok = self.loaded.tokenizer
        ids = tok(prompt, truncation=False, add_special_tokens=True)["input_ids"]
        if len(ids) <= self.max_input_len:
            return prompt, False
        half = self.max_input_len // 2
        return (tok.decode(ids[:half], skip_special_tokens=True)
                + tok.decode(ids[-half:], skip_special_tokens=True)), True

    def build_inputs(self, item: Any) -> tuple[list[int], bool, str]:
        tok = self.loaded.tokenizer
        prompt, truncated = self.truncate(item.prompt)
        if self.chat_template and item.chat_template:
            # enable_thinking reaches the template as a variable: Qwen3 turns thinking off, others ignore it.
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            text = prompt
            ids = tok(text, add_special_tokens=True)["input_ids"]
        return list(ids), truncated, text

    def generate(self, item: Any, cache: Any) -> Generation:
        import torch

        tok = self.loaded.tokenizer
        model = self.loaded.model
        ids, truncated, text = self.build_inputs(item)
        input_ids = torch.tensor([ids], device=self.loaded.device)
        eos = model.generation_config.eos_token_id
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
            eos_ids.append(tok.eos_token_id)
        kwargs: dict[str, Any] = {}
        if cache is not None:
            kwargs[cache_kwarg()] = cache
        if item.stop_at_newline and self._newline_id is not None:
            eos_ids = eos_ids + [self._newline_id]
            kwargs["min_new_tokens"] = 1
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=item.max_new_tokens, do_sample=False, num_beams=1,
                eos_token_id=eos_ids or None, pad_token_id=pad, **kwargs)
        new = out[0, input_ids.shape[1]:]
        prediction = tok.decode(new, skip_special_tokens=True)
        return Generation(prediction, len(ids), truncated, int(new.numel()),
                          hashlib.sha256(text.encode("utf-8")).hexdigest())


def runner_for(kind: str, loaded: LoadedModel, **settings: Any) -> ModelRunner:
    if kind == "text":
        return TextRunner(loaded, **settings)
    if kind in ("vision", "image"):
        from oscar_eval.vision import VisionRunner

        return VisionRunner(loaded, **settings)
    if kind == "audio":
        from oscar_eval.audio import AudioRunner

        return AudioRunner(loaded, **settings)
    if kind == "ppl":  # teacher forcing through the cache, no generation (oscar_eval.ppl_runner)
        from oscar_eval.ppl_runner import PerplexityRunner

        return PerplexityRunner(loaded, **settings)
    raise UserError(f"no model runner for {kind!r} inputs yet (only text benchmarks are implemented)")
