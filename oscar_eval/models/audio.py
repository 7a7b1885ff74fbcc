"""Audio inputs and the omni (audio + text -> text) model runner used by MMAU-Pro.

:func:`load_audio` reads a file as 16 kHz mono float32: with ``soundfile`` or ``librosa`` when
installed, else PCM WAV through the standard library (other formats then need one of the two).
:class:`AudioRunner` feeds the audio and the prompt through the model's processor (Qwen3-Omni: the
chat template with ``{"type": "audio"}`` parts) and lets the thinker generate text only, greedily,
with the KV cache passed as ``thinker_past_key_values`` (``return_audio=False``).
"""

from __future__ import annotations

import hashlib
import wave
from pathlib import Path
from typing import Any

import numpy as np

from oscar_eval.errors import UserError
from oscar_eval.models.base import Generation, cache_kwarg, cut_at_stop, eos_token_ids

SAMPLE_RATE = 16000


def _resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return x.astype(np.float32, copy=False)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(sr), int(target))
    return resample_poly(x, target // g, sr // g).astype(np.float32)


def _read_wav_stdlib(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"{path}: unsupported WAV sample width {width}")
    if ch > 1:
        x = x.reshape(-1, ch).mean(axis=1)
    return x, sr


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``path`` as mono float32 at ``sr`` Hz; a clear error for a missing file or a missing decoder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} not found")
    try:
        import soundfile as sf
    except ImportError:
        sf = None
    if sf is not None:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return _resample(data.mean(axis=1), rate, sr)
    try:
        import librosa
    except ImportError:
        librosa = None
    if librosa is not None:
        data, _ = librosa.load(str(path), sr=sr, mono=True)
        return data.astype(np.float32)
    if path.suffix.lower() == ".wav":
        try:
            x, rate = _read_wav_stdlib(path)
        except wave.Error as exc:
            raise RuntimeError(f"cannot read {path} ({exc}); install the 'soundfile' package "
                               "(pip install soundfile) for non-PCM WAV files") from None
        return _resample(x, rate, sr)
    raise RuntimeError(f"cannot read {path}: decoding {path.suffix or 'this'} audio needs the 'soundfile' "
                       "or 'librosa' package (pip install soundfile)")


def load_omni_model(path: Path, device: str, torch_dtype: Any) -> Any:
    """Qwen3-Omni-style checkpoints: the full model class with the talker (audio output) disabled."""
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    archs = list(getattr(config, "architectures", None) or [])
    cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), None)
    if cls is None:
        from transformers import AutoModelForMultimodalLM

        cls = AutoModelForMultimodalLM
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True,
                              "device_map": None if device == "cpu" else device}
    if hasattr(config, "enable_audio_output"):
        kwargs["enable_audio_output"] = False  # text-only evaluation: do not load the talker
    try:
        model = cls.from_pretrained(path, **kwargs)
    except TypeError:
        kwargs.pop("enable_audio_output", None)
        model = cls.from_pretrained(path, **kwargs)
    return model


def audio_output_lengths(feature_lengths: Any, n_window: int) -> Any:
    """Audio tokens per clip for Qwen3-Omni's encoder (13 tokens per full window of 2*n_window frames)."""
    chunk = n_window * 2
    rest = feature_lengths % chunk
    feat = (rest - 1) // 2 + 1
    return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (feature_lengths // chunk) * 13


class AudioTextProcessor:
    """Audio + text only stand-in for an omni processor (used when the model's own processor cannot be
    built, e.g. Qwen3-Omni's needs torchvision for its video part): the tokenizer's chat template, the
    feature extractor (Whisper log-mel), and each audio placeholder expanded to the number of audio
    tokens the encoder produces, exactly as Qwen3-Omni's processor does for audio."""

    def __init__(self, tokenizer: Any, feature_extractor: Any, chat_template: str | None, n_window: int,
                 audio_token: str = "<|audio_pad|>") -> None:
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.chat_template = chat_template
        self.n_window = n_window
        self.audio_token = getattr(tokenizer, "audio_token", None) or audio_token

    @classmethod
    def from_pretrained(cls, path: Path, model: Any = None, why: str = "") -> AudioTextProcessor:
        from transformers import AutoFeatureExtractor, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            fe = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot load the processor of {path} ({why or 'no processor'}) nor its tokenizer "
                              f"and feature extractor: {str(exc).splitlines()[0]}") from None
        template = getattr(tok, "chat_template", None)
        for name in ("chat_template.jinja", "chat_template.json"):
            f = Path(path) / name
            if template is None and f.is_file():
                text = f.read_text(encoding="utf-8")
                if name.endswith(".json"):
                    import json

                    text = json.loads(text).get("chat_template")
                template = text
        if template is None:
            raise UserError(f"{path}: no chat template (tokenizer_config.json or chat_template.json)")
        n_window = 50
        cfg = getattr(model, "config", None)
        for sub in ("thinker_config", "audio_config"):
            cfg = getattr(cfg, sub, cfg)
        n_window = int(getattr(cfg, "n_window", n_window) or n_window)
        return cls(tok, fe, template, n_window)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def __call__(self, text: list[str], audio: list[np.ndarray] | None = None, return_tensors: str = "pt",
                 padding: bool = True) -> dict:
        """Several prompts at once: the clips in prompt order, the batch left-padded (the tokenizer's pad
        token), as the omni processor does with ``padding_side="left"``."""
        import torch

        out: dict[str, Any] = {}
        prompts = list(text)
        if audio:
            feats = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, padding=True, truncation=False,
                                           return_attention_mask=True, return_tensors="pt")
            mask = feats["attention_mask"]
            counts = iter(audio_output_lengths(mask.sum(-1), self.n_window).tolist())
            placeholders = sum(p.count(self.audio_token) for p in prompts)
            if placeholders != len(audio):
                raise ValueError(f"prompt has {placeholders} audio placeholders for {len(audio)} audio clips")
            expanded = []
            for prompt in prompts:
                pieces = prompt.split(self.audio_token)
                expanded.append(pieces[0] + "".join(self.audio_token * int(next(counts)) + rest for rest in pieces[1:]))
            prompts = expanded
            out["input_features"] = feats["input_features"]
            out["feature_attention_mask"] = mask
        rows = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out["input_ids"] = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        out["attention_mask"] = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return out


class AudioRunner:
    """Audio + text prompt -> text, greedy, the KV cache given to the thinker; batch 1 or a left-padded
    batch (``--batch-size``) that gives each item batch 1's tokens."""

    def __init__(self, loaded: Any, max_input_len: int = 32768, chat_template: bool = True,
                 processor: Any = None) -> None:
        self.loaded = loaded
        self.max_input_len = max_input_len
        self._processor = processor

    @property
    def processor(self) -> Any:
        if self._processor is None:
            from transformers import AutoProcessor

            proc, why = None, ""
            try:
                proc = AutoProcessor.from_pretrained(self.loaded.path, local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - e.g. the video processor needs torchvision
                why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if proc is None or not (hasattr(proc, "apply_chat_template") and hasattr(proc, "tokenizer")
                                    and hasattr(proc, "feature_extractor")):
                proc = AudioTextProcessor.from_pretrained(self.loaded.path, self.loaded.model, why)
            self._processor = proc
        return self._processor

    def _text_and_audio(self, item: Any) -> tuple[str, list[np.ndarray]]:
        audios = [a if isinstance(a, np.ndarray) else load_audio(a) for a in item.audio]
        content: list[dict[str, Any]] = [{"type": "audio", "audio": f"audio_{i}"} for i in range(len(audios))]
        content.append({"type": "text", "text": item.prompt})
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        return (text[0] if isinstance(text, list) else text), audios

    def _process(self, texts: list[str], audios: list[np.ndarray]) -> Any:
        """The processor on the prompts, left-padded when there are several."""
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if audios:
            kwargs["audio"] = audios
        tok = getattr(self.processor, "tokenizer", None)
        side = getattr(tok, "padding_side", None)
        if side is not None:
            tok.padding_side = "left"
        try:
            return self.processor(**kwargs)
        finally:
            if side is not None:
                tok.padding_side = side

    def build_inputs(self, item: Any) -> tuple[Any, str]:
        text, audios = self._text_and_audio(item)
        return self._process([text], audios), text

    def prompt_tokens(self, item: Any) -> int:
        """The prompt's length in tokens, audio tokens included (what a batch pads to)."""
        return int(self.build_inputs(item)[0]["input_ids"].shape[1])

    def batch_key(self, item: Any) -> int:
        return self.prompt_tokens(item)

    def _stop_ids(self, tok: Any) -> list[int]:
        # Qwen-Omni ends a turn with <|im_end|>, which some checkpoints' configs do not list
        tid = tok.convert_tokens_to_ids("<|im_end|>") if hasattr(tok, "convert_tokens_to_ids") else None
        turn_end = [tid] if isinstance(tid, int) and tid >= 0 and tid != getattr(tok, "unk_token_id", None) else []
        return eos_token_ids(self.loaded.model, tok, turn_end)

    def generate(self, item: Any, cache: Any) -> Any:
        return self.generate_batch([item], cache)[0]

    def generate_batch(self, items: list[Any], cache: Any) -> list[Generation]:
        """Greedy generation for the items at once (left padding; the longest ``max_new_tokens``; each row
        cut at its own limit and first stop token): the tokens each item gets alone."""
        import torch

        model = self.loaded.model
        prompts = [self._text_and_audio(it) for it in items]
        inputs = self._process([t for t, _ in prompts], [a for _, clips in prompts for a in clips])
        dtype = next(model.parameters()).dtype
        batch = {}
        for k, v in dict(inputs).items():
            if torch.is_tensor(v):
                v = v.to(self.loaded.device)
                if v.is_floating_point():
                    v = v.to(dtype)
            batch[k] = v
        width = int(batch["input_ids"].shape[1])
        lengths = (batch["attention_mask"].sum(dim=1).tolist() if "attention_mask" in batch
                   else [width] * len(items))
        if max(lengths) > self.max_input_len:
            raise ValueError(f"prompt has {int(max(lengths))} tokens, more than --max-input-len {self.max_input_len}")
        tok = getattr(self.processor, "tokenizer", None) or self.loaded.tokenizer
        eos_ids = self._stop_ids(tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        limit = max(it.max_new_tokens for it in items)
        with torch.inference_mode():
            if hasattr(model, "thinker"):
                gen_kwargs = {"thinker_max_new_tokens": limit, "thinker_do_sample": False,
                              "thinker_num_beams": 1, "thinker_eos_token_id": eos_ids or None,
                              "thinker_pad_token_id": pad, "thinker_return_dict_in_generate": True}
                if cache is not None:
                    gen_kwargs["thinker_past_key_values"] = cache
                out = model.generate(**batch, return_audio=False, **gen_kwargs)
            else:
                gen_kwargs = {"max_new_tokens": limit, "do_sample": False, "num_beams": 1,
                              "eos_token_id": eos_ids or None, "pad_token_id": pad,
                              "return_dict_in_generate": True}
                if cache is not None:
                    gen_kwargs[cache_kwarg()] = cache
                out = model.generate(**batch, **gen_kwargs)
        seqs = out[0] if isinstance(out, tuple) else getattr(out, "sequences", out)
        stop_set, gens = set(eos_ids), []
        for row, (item, (text, _)) in enumerate(zip(items, prompts, strict=True)):
            new = cut_at_stop(seqs[row, width:width + item.max_new_tokens].tolist(), stop_set)
            gens.append(Generation(tok.decode(new, skip_special_tokens=True), int(lengths[row]), False, len(new),
                                   hashlib.sha256(text.encode("utf-8")).hexdigest()))
        return gens
