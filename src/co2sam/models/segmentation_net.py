"""Semantic-segmentation networks from transformers: the second stage's model.

``co2sam distill`` trains one of these on pseudo-labels; ``evaluate``/``predict``
``--segmenter`` and ``export --onnx`` run it alone (no detector, no prompts).
:class:`SegmentationNet` gives the three architectures one interface:

- ``net(pixel_values, labels)`` -> :class:`NetOutput` with the training loss;
- ``net(pixel_values)`` -> :class:`NetOutput` with ``scores``: (B, C, H, W) float class
  probabilities at the input size (softmax for the per-pixel models; Mask2Former's
  semantic inference, sum over queries of class probability x mask probability).

pixel_values: (B, 3, H, W) float, RGB normalised with :data:`IMAGE_MEAN` /
:data:`IMAGE_STD` (ImageNet's, what all three were pretrained with).
labels: (B, H, W) int64 class indices 0..C-1, 255 = ignore.

Architectures (:data:`ARCHITECTURES`):

- ``segformer``: ``SegformerForSemanticSegmentation`` (MiT-B0..B5; ``nvidia/mit-b2`` is an
  ImageNet-only encoder, the head is new). Loss: cross-entropy on the logits upsampled to
  the label size (as transformers computes it), 255 ignored.
- ``upernet``: ``UperNetForSemanticSegmentation`` (ConvNeXt / Swin backbones). Loss:
  cross-entropy + ``auxiliary_loss_weight`` (0.4) x the auxiliary FCN head's.
- ``mask2former``: ``Mask2FormerForUniversalSegmentation`` in semantic mode (one mask per
  class present). Its loss is transformers' (Hungarian matching, class + mask + dice, with
  the decoder's auxiliary copies); 255 pixels belong to no class mask, so they count as
  negatives of every mask, as in Mask2Former's own semantic data mapper.

The per-pixel losses are computed here, not by transformers, so a batch in which every
pixel is ignored gives a zero loss instead of NaN (transformers' mean over no pixel).

A trained network is a self-describing folder: the transformers ``config.json`` and
``model.safetensors`` (``save_pretrained``), plus ``co2sam_segmenter.json`` (format
version, architecture, class names, normalisation, inference sizes, training record).
Loading reads safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from co2sam.classes import IGNORE_INDEX

FORMAT_VERSION = 1
METADATA_FILE = "co2sam_segmenter.json"
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
TINY = "tiny"
"""``pretrained`` value for a small random network (tests and the demo)."""


class SegmentationNetError(ValueError):
    """A segmenter folder or pretrained source cannot be used (the message says why)."""


@dataclass(frozen=True)
class Architecture:
    """How to build one transformers architecture.

    model_class: the transformers ``...For...Segmentation`` class.
    tiny_config: num_labels -> a small random config (tests, demo).
    backbone_prefixes: parameter-name prefixes of the pretrained backbone (the optimizer
        gives them ``optim.backbone_lr_mult``; the rest gets ``optim.head_lr_mult``).
    """

    model_class: Callable[..., Any]
    tiny_config: Callable[[int], Any]
    backbone_prefixes: tuple[str, ...]


def _segformer() -> Architecture:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    def tiny(num_labels: int) -> Any:
        return SegformerConfig(
            num_labels=num_labels,
            depths=[1, 1, 1, 1],
            hidden_sizes=[16, 32, 64, 128],
            num_attention_heads=[1, 1, 2, 4],
            decoder_hidden_size=64,
            drop_path_rate=0.0,
        )

    return Architecture(SegformerForSemanticSegmentation, tiny, ("segformer.",))


def _swin_tiny() -> Any:
    from transformers import SwinConfig

    return SwinConfig(
        image_size=128,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def _mask2former() -> Architecture:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    def tiny(num_labels: int) -> Any:
        return Mask2FormerConfig(
            backbone_config=_swin_tiny(),
            num_labels=num_labels,
            feature_size=32,
            mask_feature_size=32,
            hidden_dim=32,
            encoder_feedforward_dim=64,
            dim_feedforward=64,
            encoder_layers=1,
            decoder_layers=3,
            num_attention_heads=2,
            num_queries=10,
            train_num_points=1024,
        )

    return Architecture(
        Mask2FormerForUniversalSegmentation, tiny, ("model.pixel_level_module.encoder.",)
    )


def _upernet() -> Architecture:
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    def tiny(num_labels: int) -> Any:
        backbone = ConvNextConfig(
            hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        return UperNetConfig(
            backbone_config=backbone, num_labels=num_labels, hidden_size=32, auxiliary_channels=16
        )

    return Architecture(UperNetForSemanticSegmentation, tiny, ("backbone.",))


ARCHITECTURES: dict[str, Callable[[], Architecture]] = {
    "segformer": _segformer,
    "mask2former": _mask2former,
    "upernet": _upernet,
}
"""Architecture name -> builder (transformers is imported when one is built)."""


@dataclass
class NetOutput:
    """loss: scalar (with ``labels``), else None. scores: (B, C, H, W) (without), else None."""

    loss: torch.Tensor | None = None
    scores: torch.Tensor | None = None


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels; 0 when no pixel is labelled.

    logits: (B, C, h, w), upsampled bilinearly to the labels' (H, W) when they differ.
    labels: (B, H, W) int64, 255 ignored. Equals ``CrossEntropyLoss(ignore_index=255)``
    whenever at least one pixel is labelled.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def mask_targets(labels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mask2Former's semantic targets: per image, one binary mask per class present.

    labels: (B, H, W) int64 with 255 = ignore. Returns ``mask_labels`` (B tensors
    (n_i, H, W) float) and ``class_labels`` (B tensors (n_i,) int64); n_i may be 0.
    """
    masks, classes = [], []
    for label in labels:
        present = torch.unique(label)
        present = present[present != IGNORE_INDEX]
        masks.append((label[None] == present[:, None, None]).float())
        classes.append(present)
    return masks, classes


class SegmentationNet(nn.Module):
    """A transformers segmentation model with one interface for training and inference.

    hf: the transformers model. architecture: a key of :data:`ARCHITECTURES`.
    class_names: background first; ``len(class_names)`` = the model's ``num_labels``.
    """

    def __init__(self, hf: nn.Module, architecture: str, class_names: Sequence[str]) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise SegmentationNetError(
                f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}"
            )
        if hf.config.num_labels != len(class_names):
            raise SegmentationNetError(
                f"the model has {hf.config.num_labels} classes but {len(class_names)} class "
                "names were given"
            )
        self.hf = hf
        self.architecture = architecture
        self.class_names = tuple(class_names)
        self._auxiliary: list[torch.Tensor] = []
        if architecture == "upernet" and getattr(hf, "auxiliary_head", None) is not None:
            # transformers computes the auxiliary head in every forward but returns only
            # the main logits: keep its output for the loss.
            hf.auxiliary_head.register_forward_hook(self._keep_auxiliary)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def backbone_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes (in this module) of the pretrained backbone."""
        return tuple(
            f"hf.{prefix}" for prefix in ARCHITECTURES[self.architecture]().backbone_prefixes
        )

    def _keep_auxiliary(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._auxiliary.append(output)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> NetOutput:
        """Loss (with ``labels``) or class scores at the input size (without); see module."""
        self._auxiliary.clear()
        if self.architecture == "mask2former":
            if labels is not None:
                masks, classes = mask_targets(labels)
                output = self.hf(pixel_values, mask_labels=masks, class_labels=classes)
                return NetOutput(loss=output.loss)
            output = self.hf(pixel_values)
            return NetOutput(scores=self._mask_classification_scores(output, pixel_values))
        logits = self.hf(pixel_values).logits
        auxiliary = self._auxiliary[-1] if self._auxiliary else None
        self._auxiliary.clear()
        if labels is not None:
            loss = pixel_cross_entropy(logits, labels)
            if auxiliary is not None:
                loss = loss + self.hf.config.auxiliary_loss_weight * pixel_cross_entropy(
                    auxiliary, labels
                )
            return NetOutput(loss=loss)
        if logits.shape[-2:] != pixel_values.shape[-2:]:
            logits = F.interpolate(
                logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False
            )
        return NetOutput(scores=logits.float().softmax(dim=1))

    @staticmethod
    def _mask_classification_scores(output: Any, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W): sum over queries of P(class) x P(mask), as transformers' post-process."""
        class_probs = output.class_queries_logits.float().softmax(dim=-1)[..., :-1]
        masks = F.interpolate(
            output.masks_queries_logits.float(),
            size=pixel_values.shape[-2:],
            mode="bilinear",
            align_corners=False,
        ).sigmoid()
        return torch.einsum("bqc,bqhw->bchw", class_probs, masks)


def build_net(architecture: str, pretrained: str, class_names: Sequence[str]) -> SegmentationNet:
    """A network for ``class_names`` (background first) from ``pretrained``.

    pretrained: ``tiny`` (small random network), a hub id or a local folder of the same
    architecture. The classifier is sized for ``class_names`` (a pretrained head of
    another size is replaced by a new one, the rest is loaded).
    """
    if architecture not in ARCHITECTURES:
        raise SegmentationNetError(
            f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}"
        )
    spec = ARCHITECTURES[architecture]()
    names = list(class_names)
    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    if pretrained == TINY:
        config = spec.tiny_config(len(names))
        for key, value in labels.items():
            setattr(config, key, value)
        return SegmentationNet(spec.model_class(config), architecture, names)
    try:
        hf = spec.model_class.from_pretrained(
            pretrained, num_labels=len(names), ignore_mismatched_sizes=True, **labels
        )
    except (OSError, ValueError) as error:
        raise SegmentationNetError(
            f"cannot load {architecture} weights from {pretrained!r}: {error} (give a hub id "
            "or a local transformers folder of that architecture, e.g. nvidia/mit-b2 for "
            "segformer)"
        ) from error
    return SegmentationNet(hf, architecture, names)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No transformers progress bars ("Loading weights", "Writing model shards") in the block."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def save_net(net: SegmentationNet, folder: str | Path, extra: dict[str, Any]) -> Path:
    """Write ``net`` as a segmenter folder; written beside the old one, then swapped.

    extra: JSON-serialisable record stored in ``co2sam_segmenter.json`` (training step,
    validation, inference sizes, the resolved config, ...).
    """
    folder = Path(folder)
    temp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    for path in (temp, old):
        shutil.rmtree(path, ignore_errors=True)
    with _quiet():
        net.hf.save_pretrained(temp, safe_serialization=True)
    metadata = {
        "format_version": FORMAT_VERSION,
        "architecture": net.architecture,
        "class_names": list(net.class_names),
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        **extra,
    }
    (temp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    if folder.exists():
        folder.rename(old)
    temp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_net_metadata(folder: str | Path) -> dict[str, Any]:
    """The ``co2sam_segmenter.json`` of a segmenter folder (checked)."""
    folder = Path(folder)
    path = folder / METADATA_FILE
    if not path.is_file():
        raise SegmentationNetError(
            f"{folder} is not a co2sam segmenter folder ({METADATA_FILE} is missing); give "
            "the best/ or last/ folder of a `co2sam distill` run"
        )
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SegmentationNetError(f"{path} is not valid JSON: {error}") from error
    if metadata.get("format_version") != FORMAT_VERSION:
        raise SegmentationNetError(
            f"{path}: segmenter format {metadata.get('format_version')!r}, this co2sam reads "
            f"{FORMAT_VERSION}"
        )
    if metadata.get("architecture") not in ARCHITECTURES:
        raise SegmentationNetError(f"{path}: unknown architecture {metadata.get('architecture')!r}")
    return metadata


WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_DAMAGED_FIX = (
    "the file is truncated or corrupt (an interrupted copy or download?): copy the folder "
    "again, or use the run's other checkpoint (best/ or last/)"
)


def load_net(folder: str | Path) -> tuple[SegmentationNet, dict[str, Any]]:
    """A trained network and its metadata from a segmenter folder (safetensors only).

    Every way a folder can fail to load (a file missing, truncated or corrupt, weights of
    another shape) raises :class:`SegmentationNetError` naming the file and the fix: the
    one guard of ``export``, ``predict``, ``evaluate`` and ``app``.
    """
    folder = Path(folder)
    metadata = read_net_metadata(folder)
    check_net_files(folder)
    spec = ARCHITECTURES[metadata["architecture"]]()
    try:
        with _quiet():
            hf = spec.model_class.from_pretrained(str(folder), use_safetensors=True)
    except Exception as error:  # transformers: OSError, ValueError; torch: RuntimeError
        raise SegmentationNetError(
            f"cannot load the network in {folder}: {' '.join(str(error).split())}"
        ) from error
    return SegmentationNet(hf, metadata["architecture"], metadata["class_names"]).eval(), metadata


def check_net_files(folder: str | Path) -> None:
    """``config.json`` parses and ``model.safetensors`` is whole (its header, and a size
    that holds every tensor the header lists), without reading the weights; raises
    :class:`SegmentationNetError` naming the bad file."""
    from safetensors import safe_open

    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise SegmentationNetError(
                f"{folder / name} is missing: {folder} is not a whole segmenter folder; copy "
                "it again, or give the best/ or last/ folder of a `co2sam distill` run"
            )
    config = folder / CONFIG_FILE
    try:
        json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SegmentationNetError(f"cannot read {config} ({error}): {_DAMAGED_FIX}") from error
    weights = folder / WEIGHTS_FILE
    try:  # safetensors checks the header and that the file holds every tensor it lists
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except Exception as error:  # SafetensorError (not an OSError), OSError
        reason = " ".join(str(error).split())
        raise SegmentationNetError(f"cannot read {weights} ({reason}): {_DAMAGED_FIX}") from error
