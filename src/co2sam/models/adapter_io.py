"""Adapters on disk: a self-describing folder, no pickle.

A folder holds ``adapter_model.safetensors`` (the LoRA tensors only, named as in the
plain ``SamModel``, e.g. ``vision_encoder.layers.0.attn.qkv.q.lora_A.weight``) and
``co2sam_adapter.json``::

    {"format_version": 1, "base": "facebook/sam-vit-base", "family": "sam",
     "fingerprint": {"hidden_size": 768, ...}, "lora": {"rank": 4, "alpha": 4.0,
     "target_modules": "..."}, "extra": {...}}

``family`` is the base model's family (``sam``, ``sam-hq``, ``sam2``:
:mod:`co2sam.models.families`); folders written before it existed are SAM ones. An
adapter loads only onto a model of the same family and architecture (fingerprint).

Both files are written to temporary names and renamed, with the permissions ``open()``
would give them (the umask), so a folder never holds a half-written adapter
(:func:`co2sam.atomic_files.write_atomically`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from transformers import PreTrainedModel

from co2sam.atomic_files import write_atomically
from co2sam.models.families import FAMILIES, family_of
from co2sam.models.lora import attach_lora, is_lora_name, lora_target_modules

FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter_model.safetensors"
METADATA_FILE = "co2sam_adapter.json"


class AdapterError(ValueError):
    """An adapter folder cannot be used with this model (mismatch, missing file, bad keys)."""


def _portable_name(name: str, adapter_name: str) -> str:
    """``base_model.model.X.lora_A.default.weight`` -> ``X.lora_A.weight``."""
    name = name.removeprefix("base_model.model.")
    return name.replace(f".{adapter_name}.", ".")


def adapter_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model`` (selected by parameter name), on CPU."""
    adapter_name = model.active_adapter
    return {
        _portable_name(name, adapter_name): param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if is_lora_name(name)
    }


def save_adapter(
    model: PeftModel, folder: str | Path, *, base: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write the LoRA adapter of ``model`` to ``folder`` (created if needed).

    base: the model source the adapter was trained on (what ``load_sam`` accepts).
    extra: JSON-serialisable facts to keep with it (resolved config, step, metrics).
    """
    if not isinstance(model, PeftModel):
        raise TypeError("save_adapter expects a model returned by attach_lora / load_adapter")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora_config = model.peft_config[model.active_adapter]
    target = lora_config.target_modules
    family = family_of(model)
    metadata = {
        "format_version": FORMAT_VERSION,
        "base": str(base),
        "family": family.name,
        "fingerprint": family.fingerprint(model.get_base_model().config),
        "lora": {
            "rank": int(lora_config.r),
            "alpha": float(lora_config.lora_alpha),
            "target_modules": target if isinstance(target, str) else sorted(target),
        },
        "extra": extra or {},
    }
    text = json.dumps(metadata, indent=2, default=str)
    weights = save_safetensors(adapter_state_dict(model), metadata={"format": "pt"})
    write_atomically(folder / WEIGHTS_FILE, lambda file: file.write(weights))
    write_atomically(folder / METADATA_FILE, lambda file: file.write(text.encode()))
    return folder


def read_adapter_metadata(folder: str | Path) -> dict[str, Any]:
    """The ``co2sam_adapter.json`` of an adapter folder, checked for a known format."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise AdapterError(f"{folder} is not a co2sam adapter folder: {METADATA_FILE} is missing.")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AdapterError(f"{path} is not valid JSON: {error}") from error
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise AdapterError(
            f"{path}: adapter format_version {version!r}; this co2sam reads {FORMAT_VERSION}."
        )
    return metadata


def load_adapter(
    model_or_source: PreTrainedModel | PeftModel | str | None, folder: str | Path
) -> PeftModel:
    """The base model with the LoRA adapter saved in ``folder``.

    model_or_source: a plain ``SamModel``/``SamHQModel``/``Sam2Model`` (LoRA is attached
    with the saved rank/alpha), a ``PeftModel`` from ``attach_lora`` (weights are
    overwritten), a source for ``load_sam``, or None to use the base recorded in the
    folder. The base model must be of the family and architecture the adapter was
    trained on, else :class:`AdapterError`.
    """
    from co2sam.models.loading import load_sam

    folder = Path(folder)
    metadata = read_adapter_metadata(folder)
    if model_or_source is None:
        model_or_source = metadata["base"]
    model = load_sam(model_or_source) if isinstance(model_or_source, str) else model_or_source
    base_model = model.get_base_model() if isinstance(model, PeftModel) else model
    family = family_of(base_model)
    saved_family = metadata.get("family", "sam")
    if saved_family != family.name:
        title = FAMILIES[saved_family].title if saved_family in FAMILIES else saved_family
        raise AdapterError(
            f"Adapter {folder} was trained on {title} ({metadata['base']!r}), but the base "
            f"model given is {family.title} ({type(base_model).__name__}). Load it onto "
            f"the {title} model it was trained on (or leave --sam out to use that base)."
        )
    found = family.fingerprint(base_model.config)
    if found != metadata["fingerprint"]:
        raise AdapterError(
            f"Adapter {folder} was trained on {family.title} {metadata['base']!r} "
            f"{metadata['fingerprint']}, but the base model given is {found}. "
            f"Load it onto the same {family.title} variant."
        )
    if isinstance(model_or_source, str) and model_or_source != metadata["base"]:
        # Same architecture, another name: fine for the same weights under another path
        # (hub id vs Meta .pth), wrong for other weights; say so rather than guess.
        warnings.warn(
            f"adapter {folder} was trained on SAM {metadata['base']!r}; loading it onto "
            f"{model_or_source!r} (same architecture). Results are only meaningful if "
            "these are the same weights.",
            stacklevel=2,
        )
    lora = metadata["lora"]
    if isinstance(model, PeftModel):
        config = model.peft_config[model.active_adapter]
        if (int(config.r), float(config.lora_alpha)) != (lora["rank"], lora["alpha"]):
            raise AdapterError(
                f"Adapter {folder} has rank {lora['rank']}, alpha {lora['alpha']}; the model's "
                f"LoRA has rank {config.r}, alpha {config.lora_alpha}."
            )
    else:
        targets = lora_target_modules(model)
        if lora.get("target_modules") != targets:
            raise AdapterError(
                f"Adapter {folder} targets {lora.get('target_modules')!r}; this co2sam "
                f"attaches LoRA to {targets!r}."
            )
        model = attach_lora(model, rank=lora["rank"], alpha=lora["alpha"])
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterError(f"{folder}: {WEIGHTS_FILE} is missing.")
    try:
        saved = load_file(weights)
    except Exception as error:
        raise AdapterError(f"Cannot read {weights}: {error} (truncated or corrupt?)") from error
    _copy_lora_weights(model, saved, weights)
    return model


def _copy_lora_weights(model: PeftModel, saved: dict[str, torch.Tensor], path: Path) -> None:
    adapter_name = model.active_adapter
    params = {
        _portable_name(name, adapter_name): param
        for name, param in model.named_parameters()
        if is_lora_name(name)
    }
    missing = sorted(set(params) - set(saved))
    unexpected = sorted(set(saved) - set(params))
    if missing or unexpected:
        raise AdapterError(
            f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            if saved[name].shape != param.shape:
                raise AdapterError(
                    f"{path}: {name} has shape {tuple(saved[name].shape)}, "
                    f"the model expects {tuple(param.shape)}"
                )
            param.copy_(saved[name])
