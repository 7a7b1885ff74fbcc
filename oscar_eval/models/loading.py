"""``load_model``: a checkpoint (see :mod:`~oscar_eval.models.resolve`) onto a device, with the loader its
config calls for (:mod:`~oscar_eval.models.detect`): vision-language, omni audio or a causal LM."""

from __future__ import annotations

from pathlib import Path

from oscar_eval.errors import UserError
from oscar_eval.models.base import LoadedModel
from oscar_eval.models.detect import is_omni, is_vision_language
from oscar_eval.models.resolve import resolve_device, resolve_dtype, resolve_model_path


def load_model(model: str | Path, device: str = "auto", dtype: str = "auto",
               device_map: str | dict | None = None) -> LoadedModel:
    """``device_map`` (``"auto"``, ``"balanced"``, ... or a module -> device dict) spreads a model too
    large for one GPU over several: each decoder layer, and its KV cache layer, on its own device."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    from oscar_eval.models.vision import load_vision_model

    if is_vision_language(path):  # Qwen-VL, LLaVA(-NeXT): model + processor (OCRBench)
        if device_map is not None:
            raise UserError("--device-map: not supported for vision-language models yet (one device)")
        return load_vision_model(path, device=device, dtype=dtype)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # device_map places weights directly on the GPU (no second full copy in host memory).
        from oscar_eval.models.audio import load_omni_model

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
