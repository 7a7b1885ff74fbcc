"""The text runner: causal-LM generation with the LongBench protocol (see :class:`TextRunner`)."""

from __future__ import annotations

import hashlib
from typing import Any

from oscar_eval.errors import UserError
from oscar_eval.models.base import Generation, LoadedModel, cache_kwarg, cut_at_stop, eos_token_ids


class TextRunner:
    """Causal-LM text generation with the LongBench protocol: middle truncation, optional chat template,
    greedy decoding, the KV cache passed in as ``past_key_values``; batch 1 (:meth:`generate`) or a
    left-padded batch (:meth:`generate_batch`, ``--batch-size``) with the same tokens."""

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

    def _stop_ids(self, item: Any) -> list[int]:
        newline = [self._newline_id] if item.stop_at_newline and self._newline_id is not None else []
        return eos_token_ids(self.loaded.model, self.loaded.tokenizer, newline)

    def prompt_tokens(self, item: Any) -> int:
        """The prompt's length in tokens (what a batch pads to): groups batches by length."""
        return len(self.build_inputs(item)[0])

    def batch_key(self, item: Any) -> tuple:
        # Items in one batch share their stop tokens and min_new_tokens; within that, similar lengths.
        return (bool(item.stop_at_newline), self.prompt_tokens(item))

    def generate(self, item: Any, cache: Any) -> Generation:
        return self.generate_batch([item], cache)[0]

    def generate_batch(self, items: list[Any], cache: Any) -> list[Generation]:
        """Greedy generation for several items at once: left padding (the cache aligns each sequence
        to its first real token), the longest ``max_new_tokens`` of the batch, then each row cut at its
        own limit and first stop token: the tokens batch 1 would have produced."""
        import torch

        tok = self.loaded.tokenizer
        model = self.loaded.model
        stops = {tuple(self._stop_ids(it)) for it in items}
        if len(stops) > 1:
            raise ValueError("items of one batch must share their stop tokens (stop_at_newline)")
        eos_ids = list(stops.pop())
        built = [self.build_inputs(it) for it in items]
        width = max(len(ids) for ids, _, _ in built)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(built):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        kwargs: dict[str, Any] = {}
        if cache is not None:
            kwargs[cache_kwarg()] = cache
        if any(it.stop_at_newline for it in items) and self._newline_id is not None:
            kwargs["min_new_tokens"] = 1
        device = self.loaded.device
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=max(it.max_new_tokens for it in items), do_sample=False, num_beams=1,
                eos_token_id=eos_ids or None, pad_token_id=pad, **kwargs)
        gens = []
        stop_set = set(eos_ids)
        for row, (item, (ids, truncated, text)) in enumerate(zip(items, built, strict=True)):
            new = cut_at_stop(out[row, width:width + item.max_new_tokens].tolist(), stop_set)
            prediction = tok.decode(new, skip_special_tokens=True)
            gens.append(Generation(prediction, len(ids), truncated, len(new),
                                   hashlib.sha256(text.encode("utf-8")).hexdigest()))
        return gens
