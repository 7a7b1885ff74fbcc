"""Vision-language models: loading (local files only), the :class:`VisionRunner`, the vision smoke model.

The runner follows VLMEvalKit's model classes: one user turn holding the image(s) then the question,
rendered by the model's own chat template, then the processor; greedy decoding; the KV cache passed to
``generate``; batch 1 or a left-padded batch (``--batch-size``) that gives each item batch 1's tokens.
Model-specific image handling as VLMEvalKit does it on OCRBench:

- Qwen2/2.5/3-VL: ``min_pixels = 10*10*f*f`` with ``f = patch_size*merge_size`` (``10*10*32*32`` for
  Qwen3-VL), ``max_pixels`` the processor's default (VLMEvalKit resizes with ``qwen_vl_utils``; the
  processor's ``smart_resize`` with the same bounds gives the same size);
- LLaVA-NeXT: the processor's chat template and its default anyres image handling.

Where ``AutoProcessor`` cannot build a Qwen-VL processor (e.g. without torchvision, which its video
processor needs), :class:`QwenVLProcessor` composes the tokenizer, the PIL image processor and the chat
template and expands the image tokens exactly as ``Qwen3VLProcessor`` does for images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oscar_eval.errors import UserError
from oscar_eval.models.base import Generation, LoadedModel, cache_kwarg, cut_at_stop, eos_token_ids
from oscar_eval.models.detect import QWEN_VL_TYPES
from oscar_eval.models.resolve import resolve_device, resolve_dtype, resolve_model_path

OCRBENCH_MIN_PIXEL_UNITS = 10 * 10  # VLMEvalKit: min_pixels = 10*10*32*32 for Qwen3-VL on OCRBench


@dataclass
class LoadedVisionModel(LoadedModel):
    processor: Any = None

    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", ""))


class QwenVLProcessor:
    """Tokenizer + Qwen2-VL image processor + chat template, expanding ``<|image_pad|>`` per image."""

    image_token = "<|image_pad|>"

    def __init__(self, tokenizer: Any, image_processor: Any, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {self.image_token} token")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False, **kwargs: Any) -> str:
        if not self.chat_template:
            raise ValueError("no chat template (chat_template.jinja / chat_template.json / tokenizer)")
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=tokenize,
                                                  add_generation_prompt=add_generation_prompt, **kwargs)

    def __call__(self, text: list[str], images: list[Any] | None = None, return_tensors: str = "pt",
                 size: dict | None = None, **kwargs: Any):
        import torch
        from transformers import BatchFeature

        data: dict[str, Any] = {}
        texts = list(text)
        if images:
            img_kwargs = {"size": size} if size else {}
            feats = self.image_processor(images=images, return_tensors="pt", **img_kwargs)
            data.update(feats)
            merge = self.image_processor.merge_size ** 2
            counts = iter([int(g.prod()) // merge for g in feats["image_grid_thw"]])
            placeholder = "\x00IMG\x00"
            out = []
            for t in texts:
                while self.image_token in t:
                    t = t.replace(self.image_token, placeholder * next(counts), 1)
                out.append(t.replace(placeholder, self.image_token))
            texts = out
        enc = self.tokenizer(texts, return_tensors="pt", padding=len(texts) > 1)
        data["input_ids"] = enc["input_ids"]
        data["attention_mask"] = enc["attention_mask"]
        data["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).to(torch.int32)
        return BatchFeature(data=data, tensor_type=return_tensors)


def _chat_template_from(path: Path, tokenizer: Any) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return getattr(tokenizer, "chat_template", None)


def load_processor(path: Path, model_type: str) -> Any:
    """The model's processor; for Qwen-VL models a :class:`QwenVLProcessor` where AutoProcessor fails."""
    from transformers import AutoProcessor

    error: Exception | None = None
    try:
        proc = AutoProcessor.from_pretrained(path, local_files_only=True)
        if hasattr(proc, "image_processor") and hasattr(proc, "tokenizer"):
            return proc
    except Exception as exc:  # noqa: BLE001 - fall back below, report if that fails too
        error = exc
    if model_type in QWEN_VL_TYPES:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        try:
            from transformers import AutoImageProcessor

            ip = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        except Exception:  # noqa: BLE001 - e.g. the torchvision backend is not installed
            from transformers import Qwen2VLImageProcessorPil

            ip = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
        return QwenVLProcessor(tok, ip, _chat_template_from(path, tok))
    why = f" ({str(error).splitlines()[0]})" if error else ""
    raise UserError(f"cannot build an image processor for {path}{why}")


def load_vision_model(model: str | Path, device: str = "auto", dtype: str = "auto") -> LoadedVisionModel:
    from transformers import AutoModelForImageTextToText

    path = resolve_model_path(model)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        model_type = str(cfg.get("model_type", ""))
        processor = load_processor(path, model_type)
        net = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, local_files_only=True,
                                                          device_map=None if device == "cpu" else device)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load vision-language model from {path}: {str(exc).splitlines()[0]}") from None
    net.eval()
    return LoadedVisionModel(net, processor.tokenizer, path, device, str(torch_dtype).removeprefix("torch."),
                             processor=processor)


class VisionRunner:
    """Image(s) + question through the processor's chat template; greedy; the cache into ``generate``."""

    def __init__(self, loaded: LoadedModel, max_input_len: int | None = None, chat_template: bool = False,
                 **_: Any) -> None:
        processor = getattr(loaded, "processor", None)
        if processor is None:
            raise UserError(f"{loaded.path}: not loaded as a vision-language model (no processor)")
        self.loaded = loaded
        self.processor = processor
        self.max_input_len = max_input_len  # informative: OCRBench prompts are never truncated
        self.model_type = str(getattr(loaded.model.config, "model_type", ""))

    def image_kwargs(self, item: Any) -> dict[str, Any]:
        """Per-model processor arguments for the item's benchmark (VLMEvalKit's choices)."""
        if self.model_type in QWEN_VL_TYPES and item.extra.get("vlmeval_dataset") == "OCRBench":
            ip = self.processor.image_processor
            factor = int(ip.patch_size) * int(ip.merge_size)
            size = dict(ip.size)
            return {"size": {"shortest_edge": OCRBENCH_MIN_PIXEL_UNITS * factor * factor,
                             "longest_edge": int(size.get("longest_edge") or size.get("max_pixels"))}}
        return {}

    def messages(self, item: Any) -> list[dict]:
        """One user turn: the images, then the question (VLMEvalKit); ``extra["content"]`` keeps an order."""
        content = item.extra.get("content") or (
            [{"type": "image"} for _ in item.images] + [{"type": "text", "text": item.prompt}])
        return [{"role": "user", "content": content}]

    def build_inputs(self, item: Any) -> tuple[Any, str]:
        """The processor's inputs for one item, and its rendered prompt."""
        inputs, texts = self._batch_inputs([item])
        return inputs, texts[0]

    @staticmethod
    def _open(image: Any):
        if hasattr(image, "open") and callable(image.open) and not isinstance(image, str | Path):
            return image.open()
        from PIL import Image

        if isinstance(image, str | Path):
            with Image.open(image) as im:
                return im.convert("RGB")
        return image.convert("RGB")

    def prompt_tokens(self, item: Any) -> int:
        """The prompt's length in tokens, image tokens included (what a batch pads to)."""
        return int(self.build_inputs(item)[0]["input_ids"].shape[1])

    def batch_key(self, item: Any) -> tuple:
        # One processor call per batch: its items share the image arguments; within that, similar lengths.
        return (json.dumps(self.image_kwargs(item), sort_keys=True), self.prompt_tokens(item))

    def _stop_ids(self) -> list[int]:
        return eos_token_ids(self.loaded.model, self.processor.tokenizer)

    def _batch_inputs(self, items: list[Any]) -> tuple[Any, list[str]]:
        """The processor on the whole batch, left-padded (the cache aligns each row to its first token)."""
        kwargs = {json.dumps(self.image_kwargs(it), sort_keys=True) for it in items}
        if len(kwargs) > 1:
            raise ValueError("items of one batch must share their image arguments")
        texts = [self.processor.apply_chat_template(self.messages(it), add_generation_prompt=True, tokenize=False)
                 for it in items]
        images = [self._open(im) for it in items for im in it.images]
        tok = self.processor.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            extra = {"padding": True} if len(items) > 1 else {}
            inputs = self.processor(text=texts, images=images or None, return_tensors="pt",
                                    **self.image_kwargs(items[0]), **extra)
        finally:
            tok.padding_side = side
        return inputs, texts

    def generate(self, item: Any, cache: Any) -> Generation:
        return self.generate_batch([item], cache)[0]

    def generate_batch(self, items: list[Any], cache: Any) -> list[Generation]:
        """Greedy generation for the items at once: the longest ``max_new_tokens`` of the batch, then each
        row cut at its own limit and first stop token (generate pads a finished row): batch 1's tokens."""
        import torch

        model = self.loaded.model
        tok = self.processor.tokenizer
        inputs, texts = self._batch_inputs(items)
        device = getattr(model, "device", self.loaded.device)
        batch = {}
        for k, v in inputs.items():
            if hasattr(v, "to"):
                v = v.to(device)
                if torch.is_floating_point(v):
                    v = v.to(model.dtype)
            batch[k] = v
        eos_ids = self._stop_ids()
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        kwargs: dict[str, Any] = {}
        if cache is not None:
            kwargs[cache_kwarg()] = cache
        width = int(batch["input_ids"].shape[1])
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max(it.max_new_tokens for it in items), do_sample=False,
                                 num_beams=1, eos_token_id=eos_ids or None, pad_token_id=pad, **kwargs)
        lengths = batch["attention_mask"].sum(dim=1).tolist() if "attention_mask" in batch else [width] * len(items)
        stop_set = set(eos_ids)
        gens = []
        for row, (item, text) in enumerate(zip(items, texts, strict=True)):
            new = cut_at_stop(out[row, width:width + item.max_new_tokens].tolist(), stop_set)
            prediction = tok.decode(new, skip_special_tokens=True)
            if "</think>" in prediction:  # thinking variants: keep the answer after the reasoning
                prediction = prediction.split("</think>")[-1]
            digest = hashlib.sha256(text.encode("utf-8"))
            for im in item.images:
                data = getattr(im, "data", None)
                if isinstance(data, bytes):
                    digest.update(hashlib.sha256(data).digest())
            gens.append(Generation(prediction.strip(), int(lengths[row]), False, len(new), digest.hexdigest()))
        return gens


# -- the vision smoke configuration ------------------------------------------------------------------
SMOKE_VERSION = 1
SMOKE_LABEL = "smoke-tiny-qwen3-vl"
SMOKE_OCRBENCH_DATA = Path(__file__).resolve().parents[1] / "data" / "ocrbench_smoke"
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_smoke_tokenizer():
    """The byte-level smoke tokenizer plus Qwen's chat and vision special tokens, with a Qwen-style template."""
    from oscar_eval.smoke import build_tokenizer

    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def build_smoke_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                    size={"shortest_edge": 64 * 64, "longest_edge": 16384 * 32 * 32},
                                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def build_smoke_model(tok):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
                bos_token_id=tok.bos_token_id, eos_token_id=ids["<|im_end|>"], pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12],
                                 "mrope_interleaved": True})
    vision = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(1234)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = [ids["<|im_end|>"], tok.eos_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def smoke_model_path() -> Path:
    """Build (once) and return the folder of the tiny random Qwen3-VL."""
    from oscar_eval.smoke import build_once, cache_root

    def build(folder: Path) -> None:
        tok = build_smoke_tokenizer()
        build_smoke_model(tok).save_pretrained(folder)
        tok.save_pretrained(folder)
        build_smoke_image_processor().save_pretrained(folder)

    return build_once(cache_root() / f"{SMOKE_LABEL}-v{SMOKE_VERSION}", build,
                      ("config.json", "preprocessor_config.json"))
