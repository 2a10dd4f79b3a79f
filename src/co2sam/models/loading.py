"""``load_sam``: one entry point for every way a user can name SAM weights."""

from __future__ import annotations

import re
from pathlib import Path

from transformers import SamModel

from co2sam.models.lora import freeze
from co2sam.models.official import load_official_checkpoint
from co2sam.models.variants import SAM_VARIANTS, build_sam

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_CHECKPOINT_SUFFIXES = (".pth", ".pt")


def load_sam(source: str) -> SamModel:
    """A frozen ``SamModel`` in eval mode from ``source``, which is one of:

    - ``demo``: the small SAM shipped with the package for ``co2sam demo``;
    - a registered variant (``tiny``, ``vit_b``, ...; random weights, seed 0) or
      ``<variant>:<seed>`` for other random weights;
    - an official Meta checkpoint file (``sam_vit_b_01ec64.pth``, ...), variant
      detected from the weights;
    - a local folder in transformers format (``config.json`` + weights);
    - a Hugging Face hub id (``facebook/sam-vit-base``), resolved only here.
    """
    source = str(source)
    if source == "demo":
        source = str(_demo_sam_folder())
    name, _, seed = source.partition(":")
    if name in SAM_VARIANTS and (not seed or seed.isdigit()):
        return freeze(build_sam(name, seed=int(seed or 0)))
    path = Path(source).expanduser()
    if path.is_file() or path.suffix in _CHECKPOINT_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint not found: {path}")
        return freeze(load_official_checkpoint(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a transformers SAM folder (no config.json); pass a folder "
                "written by SamModel.save_pretrained, an official .pth file or a hub id."
            )
        return freeze(SamModel.from_pretrained(path))
    if _HUB_ID.fullmatch(source) and not source.startswith("."):
        try:
            return freeze(SamModel.from_pretrained(source))
        except OSError as error:
            raise OSError(
                f"Cannot load SAM {source!r} from the Hugging Face hub ({error}). Check the id "
                "and the network, or pass a local folder or an official .pth file."
            ) from error
    raise FileNotFoundError(
        f"SAM weights not found: {source!r} is not a file, a folder, a hub id "
        f"(owner/name) or a registered variant ({', '.join(SAM_VARIANTS)})."
    )


def _demo_sam_folder() -> Path:
    """The shipped demo SAM (transformers folder inside the package)."""
    from co2sam.demo.model import demo_sam_path

    return demo_sam_path()
