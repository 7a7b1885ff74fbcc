"""Perplexity through a KV cache (KIVI / KVQuant style): teacher forcing one document through a method's cache.

A document's first ``P`` tokens are the prompt and the next ``N`` the scored continuation
(``t[P] .. t[P+N-1]``):

- the prompt goes through the model in one forward with the cache (``cache=`` in transformers >= 5.2x,
  ``past_key_values=`` before, see :func:`oscar_eval.models.base.cache_kwarg`): it attends over its
  own unquantized keys and values, and the cache quantizes it afterwards (METHODS.md, prefill policy);
  the logits at its last position predict ``t[P]``, the first scored token, so that one is predicted
  in full precision (reported apart as ``first`` as well as inside the totals);
- then ``t[P] .. t[P+N-2]`` are fed one token per forward through the same cache (teacher forcing: the
  true token, never the model's guess); step ``j`` predicts ``t[P+j+1]``. These ``N-1`` predictions are
  the ones the quantized cache affects (``cached``);
- the reference is one plain forward of the model over the ``P+N`` tokens with ``use_cache=False``
  (no cache at all, the model's own attention), its logits at positions ``P-1 .. P+N-2``.

The reference is computed with the model as it stands for the method: after ``make_cache`` a method that
rotates values (oscar, quarot) has the Hadamard fused into ``v_proj``/``o_proj``, which is the same
function in exact arithmetic (an orthogonal change of basis inside each head). Recomputing the reference
on the unfused weights would need a second copy of the model or a pre-pass per method; the difference
is the weights' rounding to their dtype once (float32: under 1e-4 of a logit on the tiny test model,
tests/eval/test_ppl.py; SmolLM2-135M's reference PPL moved by 1e-7 relative), so KL here measures what
the cache does, not the fused weights' rounding (in bfloat16 that rounding is larger and is left out).

Per position: NLL of the true token under the method (nats), KL(reference || method) over the
vocabulary (softmax and sum in float64 from the float32 logits, clamped at 0 against
rounding), and whether the two argmax tokens agree.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from oscar_eval.errors import UserError
from oscar_eval.models.base import Generation, LoadedModel, cache_kwarg


def document_ids(tokenizer: Any, text: str) -> list[int]:
    """A document's tokens, exactly as both the benchmark (length check) and the runner see them: the
    tokenizer's own special tokens included (BOS where it adds one), never truncated."""
    return list(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


def reference_logits(model: Any, ids: Any, prompt_tokens: int) -> Any:
    """``[N, vocab]`` float32 logits of a plain full-precision forward (no cache) at the positions
    predicting ``t[P] .. t[P+N-1]``."""
    import torch

    n = ids.shape[1] - prompt_tokens
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=n + 1)
    return out.logits[0, :-1].float()


def _position_metrics(logits: Any, ref_logits: Any, target: int) -> tuple[float, float, int, float]:
    """(NLL, KL(ref || method), top-1 agreement, reference NLL) at one position. Softmax and sum in float64:
    float32 normalisation alone leaves ~1e-7 in a KL, which would hide a near-zero one."""
    logp = logits.double().log_softmax(-1)
    ref = ref_logits.double().log_softmax(-1)
    kl = float((ref.exp() * (ref - logp)).sum().clamp_min(0.0))
    return -float(logp[target]), kl, int(int(logits.argmax()) == int(ref_logits.argmax())), -float(ref[target])


def teacher_forced(model: Any, ids: Any, prompt_tokens: int, cache: Any, ref_logits: Any) -> dict[str, list]:
    """Per scored position: ``nll``, ``kl`` (to the reference), ``top1`` agreement and the reference's own
    ``ref_nll``; position 0 from the prompt's forward, positions 1.. from one-token forwards through
    ``cache`` (see the module doc)."""
    import torch

    kw = {cache_kwarg(): cache}
    total = ids.shape[1]
    per: dict[str, list] = {"nll": [], "kl": [], "top1": [], "ref_nll": []}

    def record(logits: Any, j: int) -> None:
        values = _position_metrics(logits[0, -1].float(), ref_logits[j], int(ids[0, prompt_tokens + j]))
        for key, value in zip(per, values, strict=True):
            per[key].append(value)

    prompt = ids[:, :prompt_tokens]
    out = model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True, logits_to_keep=1, **kw)
    record(out.logits, 0)
    for pos in range(prompt_tokens, total - 1):
        out = model(input_ids=ids[:, pos:pos + 1], attention_mask=ids.new_ones(1, pos + 1), use_cache=True, **kw)
        record(out.logits, pos - prompt_tokens + 1)
    return per


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def document_metrics(per: dict[str, list], prompt_tokens: int, doc_tokens: int) -> dict:
    """The record's ``metrics``: means over all scored tokens, the first (full-precision) token and the
    cached steps apart, the fp16 reference's NLL, and the per-token lists (for plots and re-scoring)."""
    nll, kl, top1, ref_nll = per["nll"], per["kl"], per["top1"], per["ref_nll"]
    bad = next((j for j, v in enumerate(nll + kl + ref_nll) if not math.isfinite(v)), None)
    if bad is not None:  # a NaN/inf logit: one failed record, never a NaN in the store
        raise ValueError(f"non-finite NLL/KL at scored position {bad % len(nll)}")
    mean_nll = _mean(nll)
    ref_mean = _mean(ref_nll)
    return {
        "prompt_tokens": prompt_tokens, "scored_tokens": len(nll), "document_tokens": doc_tokens,
        "nll": mean_nll, "ppl": math.exp(mean_nll), "kl": _mean(kl), "top1": _mean(top1),
        "ref_nll": ref_mean, "ref_ppl": math.exp(ref_mean),
        "first": {"nll": nll[0], "kl": kl[0], "top1": top1[0]},
        "cached": {"tokens": len(nll) - 1, "nll": _mean(nll[1:]), "kl": _mean(kl[1:]), "top1": _mean(top1[1:])},
        "nll_tokens": nll, "kl_tokens": kl, "top1_tokens": top1,
    }


class PerplexityRunner:
    """The ``ppl`` runner kind: ``generate(item, cache)`` measures instead of generating; the returned
    :class:`Generation` carries ``metrics`` (see :func:`document_metrics`) and an empty prediction."""

    def __init__(self, loaded: LoadedModel, chat_template: bool = False, **_: Any) -> None:
        if chat_template:
            raise UserError("--chat-template does not apply to ppl: documents are scored as raw text")
        self.loaded = loaded

    def generate(self, item: Any, cache: Any) -> Generation:
        import torch

        p, n = int(item.extra["prompt_tokens"]), int(item.extra["scored_tokens"])
        all_ids = document_ids(self.loaded.tokenizer, item.prompt)
        if len(all_ids) < p + n:  # the benchmark checks this first; a changed tokenizer must not slip by
            raise ValueError(f"document {item.item_id} has {len(all_ids)} tokens, needs {p + n}")
        ids = torch.tensor([all_ids[:p + n]], device=self.loaded.device)
        model = self.loaded.model
        with torch.inference_mode():
            per = teacher_forced(model, ids, p, cache, reference_logits(model, ids, p))
        metrics = document_metrics(per, p, len(all_ids))
        return Generation("", p + n, len(all_ids) > p + n, 0,
                          hashlib.sha256(item.prompt.encode("utf-8")).hexdigest(), metrics=metrics)
