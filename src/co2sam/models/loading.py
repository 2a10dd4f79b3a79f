"""``load_sam``: one entry point for every way a user can name segmenter weights."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel

from co2sam.asset_paths import demo_sam_path
from co2sam.hub import HUB_ID
from co2sam.models.families import all_variants, family_of_model_type, variant_family
from co2sam.models.lora import freeze
from co2sam.models.official import (
    detect_variant,
    load_official_state_dict,
    read_official_checkpoint,
)
from co2sam.models.official_sam2 import is_sam2_state, load_sam2_state
from co2sam.models.variants import build_sam, is_meta_variant, use_meta_layer_norm_eps

_CHECKPOINT_SUFFIXES = (".pth", ".pt")


def load_sam(source: str) -> PreTrainedModel:
    """A frozen model in eval mode (``SamModel``, ``SamHQModel`` or ``Sam2Model``) from
    ``source``, which is one of:

    - ``demo``: the small SAM shipped with the package for ``co2sam demo``;
    - a registered architecture (``tiny``, ``vit_b``, ``tiny_hq``, ``sam_hq_vit_b``,
      ``tiny_sam2``, ``sam2_hiera_base_plus``, ...; random weights, seed 0) or
      ``<variant>:<seed>`` for other random weights;
    - an official Meta checkpoint: SAM's ``sam_vit_b_01ec64.pth`` (...) or SAM 2's
      ``sam2.1_hiera_base_plus.pt`` (...), family and variant read off the weights;
    - a local folder in transformers format (``config.json`` + weights), the family
      read from its ``model_type``;
    - a Hugging Face hub id (``facebook/sam-vit-base``,
      ``syscv-community/sam-hq-vit-base``, ``facebook/sam2.1-hiera-base-plus``),
      resolved only here.

    SAM ViT-B/L/H weights are Meta's, so their mask decoder gets Meta's LayerNorm eps
    (1e-5) whatever a folder's or the hub's ``config.json`` says (transformers' default is
    1e-6).
    """
    source = str(source)
    if source == "demo":
        source = str(demo_sam_path())
    name, _, seed = source.partition(":")
    family = variant_family(name)
    if family is not None and (not seed or seed.isdigit()):
        return freeze(family.build(name, seed=int(seed or 0)))
    path = Path(source).expanduser()
    if path.is_file() or path.suffix in _CHECKPOINT_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint not found: {path}")
        return freeze(_load_checkpoint(path))
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{path} is not a transformers model folder (no config.json); pass a folder "
                "written by save_pretrained, an official .pth/.pt file or a hub id."
            )
        model_type = json.loads(config_path.read_text()).get("model_type", "?")
        family = family_of_model_type(model_type, str(config_path))
        return freeze(_meta_eps(family.model_class.from_pretrained(path)))
    if HUB_ID.fullmatch(source) and not source.startswith("."):
        return freeze(_meta_eps(_from_hub(source)))
    raise FileNotFoundError(
        f"SAM weights not found: {source!r} is not a file, a folder, a hub id "
        f"(owner/name) or a registered architecture ({', '.join(all_variants())})."
    )


def _load_checkpoint(path: Path) -> PreTrainedModel:
    """SAM (``.pth``) or SAM 2 (``.pt``) from Meta, told apart by the encoder's keys."""
    state = read_official_checkpoint(path)
    if is_sam2_state(state):
        return load_sam2_state(state, path)
    return load_official_state_dict(build_sam(detect_variant(state, path)), state, path)


def _meta_eps(model: PreTrainedModel) -> PreTrainedModel:
    """Meta's mask-decoder LayerNorm eps for SAM ViT-B/L/H weights (other models as given)."""
    from transformers import SamModel

    if type(model) is SamModel and is_meta_variant(model.config):
        return use_meta_layer_norm_eps(model)
    return model


def _from_hub(source: str) -> PreTrainedModel:
    from transformers import AutoConfig

    from co2sam.hub import hub_options

    options = hub_options(source, "SAM (or an official .pth/.pt file)")  # no network: at once
    try:
        model_type = AutoConfig.from_pretrained(source, **options).model_type
        family = family_of_model_type(model_type, f"hub model {source}")
        return family.model_class.from_pretrained(source, **options)
    except OSError as error:
        raise OSError(
            f"Cannot load {source!r} from the Hugging Face hub ({error}). Check the id "
            "and the network, or pass a local folder or an official .pth/.pt file."
        ) from error
