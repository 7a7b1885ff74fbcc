"""What a run is, in words a reader cannot miss: smoke ("random weights"), partial ("partial: 37/220
items"), GGUF-derived weights, and the decode path the cache took (manifest ``config.runtime``)."""

from __future__ import annotations

from typing import Any

from oscar_eval.report.store import Run, num, text

RANDOM_WEIGHTS = "random weights"


def _dict(d: Any, *path: str) -> dict:
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d if isinstance(d, dict) else {}


def is_smoke(run: Run) -> bool:
    """The built-in smoke configuration: a tiny model with random weights on fixture data."""
    return "smoke" in (run.manifest.get("configuration"), (run.summary or {}).get("configuration"))


def model_source(run: Run) -> dict:
    """``manifest.model.source``: where converted weights came from ({} for an ordinary checkpoint)."""
    return _dict(run.manifest, "model", "source")


def is_real(run: Run) -> bool:
    """A real checkpoint: the manifest records the weights' source, and it is not the smoke model."""
    return bool(model_source(run)) and not is_smoke(run)


def gguf_label(run: Run) -> str | None:
    source = model_source(run)
    if "gguf-dequantized" not in text(source.get("format")):
        return None
    quant = text(source.get("quantization"))
    return f"GGUF-derived weights ({quant})" if quant else "GGUF-derived weights"


def shown_as_sample(run: Run) -> bool:
    """A real-checkpoint RULER run of N samples per task, all scored: shown in the real-checkpoint
    tables, labelled with N, though it covers fewer than RULER's default samples."""
    return is_real(run) and run.samples_per_task is not None


def coverage_label(run: Run) -> str | None:
    """``partial: 37/220 items`` for a run that did not cover its whole data set, else None."""
    if not run.partial:
        return None
    if shown_as_sample(run):
        return f"{run.samples_per_task} samples/task"
    cov = run.coverage
    if cov is None:
        return "partial: --limit (coverage not recorded)"
    return f"partial: {int(num(cov['done']) or 0)}/{int(num(cov['total']) or 0)} items"


def decode_path(run: Run) -> str | None:
    """``kernel``, ``kernel-fallback``, ``reference`` or ``fp16`` (docs/results.md), None if not recorded."""
    value = _dict(run.manifest, "config", "runtime").get("decode_path")
    return None if value in (None, "") else text(value)


def run_labels(run: Run, with_partial: bool = True) -> list[str]:
    """The labels shown next to a run's numbers (the decode path is shown per table, see tables.py)."""
    out = [RANDOM_WEIGHTS] if is_smoke(run) else []
    if with_partial and (cov := coverage_label(run)):
        out.append(cov)
    if gguf := gguf_label(run):
        out.append(gguf)
    return out


def all_labels(run: Run) -> str:
    """Every label, the decode path included, for provenance rows ("—" when none applies)."""
    parts = run_labels(run)
    if path := decode_path(run):
        parts.append(f"decode path: {path}")
    return "; ".join(parts) or "—"
