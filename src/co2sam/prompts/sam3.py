"""SAM 3 as a box prompter: image + class names -> Boxes (``Sam3Model``, text prompts).

SAM 3 detects every instance of a concept named by a short text. Here each text of a
class (its readable name, or its synonyms) is one prompt; per image, the vision encoder
runs once and its features are shared by all prompts (rows of one forward), and each
text's encoding is computed once per prompter and reused for every image. A query of a
prompt is kept when SAM 3's own score, sigmoid(query logit) x sigmoid(presence logit),
exceeds ``box_threshold`` (its processor's ``threshold``); that score is the box's
confidence and the prompt's class is its class. ``text_threshold`` does not apply (SAM
3 scores a whole prompt, not its tokens).

Query modes are those of Grounding DINO (:mod:`co2sam.prompts.grounding_dino`):
per-class (the image's labels) or all classes. Where Grounding DINO packs the whole
vocabulary into 256-token prompts, SAM 3 takes one prompt per class text (at most 32
tokens; a longer text is refused, as Grounding DINO refuses a class over 256 tokens),
sent ``texts_per_forward`` at a time.

Preprocessing is SAM 3's processor's, done in torch (it needs torchvision): resize to
SxS ignoring the aspect ratio (S = 1008), scale to [0, 1], normalise with mean = std =
0.5. Boxes come out normalised XYXY and are scaled to the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from co2sam.prompts.class_texts import class_prompts
from co2sam.prompts.text_detector import (
    check_label,
    class_text_table,
    concatenate_boxes,
    load_with_tokenizer,
    resolve_device,
    unit_pixels,
)
from co2sam.records import Boxes

SAM3_MEAN = (0.5, 0.5, 0.5)
SAM3_STD = (0.5, 0.5, 0.5)


def preprocess_sam3(images: Sequence[np.ndarray], size: int, device="cpu") -> torch.Tensor:
    """HWC uint8 RGB images -> (B, 3, size, size) float: stretched to a square, bilinear
    (antialiased), scaled to [0, 1] and normalised with SAM 3's mean/std."""
    tensors = []
    for image in images:
        pixels = unit_pixels(image, device)
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)
        tensors.append(pixels[0].clamp(0, 1))
    mean = torch.tensor(SAM3_MEAN, device=device)[:, None, None]
    std = torch.tensor(SAM3_STD, device=device)[:, None, None]
    return (torch.stack(tensors) - mean) / std


class Sam3Prompter:
    """SAM 3 box prompter over a fixed class vocabulary (see the module docstring).

    class_names: dataset names, background first. class_texts: texts per class
    ``[[texts of class 1], ...]``; default: the readable names. batch_size: images per
    vision-encoder forward. Call with an HWC uint8 image; returns Boxes in the original
    image's pixel frame, classes in 1..C, SAM 3's score as confidence.
    """

    def __init__(
        self,
        model,
        tokenizer,
        class_names: Sequence[str],
        *,
        class_texts: Sequence[Sequence[str]] | None = None,
        box_threshold: float = 0.30,
        batch_size: int = 1,
        device: str = "auto",
        texts_per_forward: int = 16,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.class_names = tuple(class_names)
        texts = class_texts if class_texts is not None else class_prompts(self.class_names)
        self.class_texts = class_text_table(self.class_names, texts)
        self.box_threshold = box_threshold
        self.batch_size = max(1, batch_size)
        self.texts_per_forward = max(1, texts_per_forward)
        config = model.config
        self.image_size = int(config.vision_config.backbone_config.image_size)
        self.max_tokens = int(config.text_config.max_position_embeddings)
        self._tokens = {
            text: self._tokenize(index, text)
            for index, options in self.class_texts.items()
            for text in options
        }
        self._text_features: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(
        cls, source: str | Path, class_names: Sequence[str], **kwargs
    ) -> Sam3Prompter:
        """Load model and tokenizer from a hub id (``facebook/sam3``) or a local folder."""
        from transformers import Sam3Model

        model, tokenizer = load_with_tokenizer(Sam3Model, source, "SAM 3", "facebook/sam3")
        return cls(model, tokenizer, class_names, **kwargs)

    @classmethod
    def from_config(cls, config, class_names: Sequence[str]) -> Sam3Prompter:
        """From ``config.prompts`` (detector, box threshold, synonyms, batch size, device)."""
        prompts = config.prompts
        return cls.from_pretrained(
            prompts.detector,
            class_names,
            class_texts=class_prompts(class_names, prompts.synonyms),
            box_threshold=prompts.box_threshold,
            batch_size=prompts.batch_size,
            device=prompts.device,
        )

    def _tokenize(self, class_index: int, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), each (1, max_tokens), padded as SAM 3's processor."""
        length = len(self.tokenizer(text)["input_ids"])
        if length > self.max_tokens:
            raise ValueError(
                f"the SAM 3 text {text!r} of class {class_index} needs {length} tokens, more "
                f"than the model's limit of {self.max_tokens}; give a shorter synonym"
            )
        encoded = self.tokenizer(
            text, padding="max_length", max_length=self.max_tokens, return_tensors="pt"
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def queries_for(self, labels: Sequence[int] | None) -> list[tuple[int, str]]:
        """(class, text) prompts for one image: its labels' texts, or every class's."""
        if labels is None:
            labels = list(self.class_texts)
        queries = []
        for label in labels:
            check_label(label, self.class_texts)
            queries.extend((label, text) for text in self.class_texts[label])
        return queries

    def _text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded texts (K, T, D) and their attention masks (K, T), computed once per text."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        for text in texts:
            if text not in self._text_features:
                input_ids, mask = (t.to(self.device) for t in self._tokens[text])
                output = self.model.get_text_features(input_ids=input_ids, attention_mask=mask)
                self._text_features[text] = output.pooler_output
        features = torch.cat([self._text_features[text] for text in texts])
        masks = torch.cat([self._tokens[text][1] for text in texts]).to(self.device)
        return BaseModelOutputWithPooling(pooler_output=features), masks

    def __call__(self, image: np.ndarray, labels: Sequence[int] | None = None) -> Boxes:
        """Boxes of one HWC uint8 image; ``labels`` given: per-class mode, else all classes."""
        return self.detect([image], [labels])[0]

    @torch.inference_mode()
    def detect(
        self, images: Sequence[np.ndarray], labels: Sequence[Sequence[int] | None]
    ) -> list[Boxes]:
        """Boxes for several images; ``labels[i]`` as in :meth:`__call__`."""
        found: list[Boxes] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels = preprocess_sam3(chunk, self.image_size, self.device)
            vision = self.model.get_vision_features(pixel_values=pixels)
            for row, image in enumerate(chunk):
                queries = self.queries_for(labels[start + row])
                parts = [
                    self._run(vision, row, queries[first : first + self.texts_per_forward], image)
                    for first in range(0, len(queries), self.texts_per_forward)
                ]
                found.append(concatenate_boxes(parts))
        return found

    def _run(self, vision, row: int, queries: list[tuple[int, str]], image: np.ndarray) -> Boxes:
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        count = len(queries)

        def rows(tensor: torch.Tensor) -> torch.Tensor:
            return tensor[row : row + 1].expand(count, *tensor.shape[1:])

        shared = Sam3VisionEncoderOutput(
            last_hidden_state=rows(vision.last_hidden_state),
            fpn_hidden_states=tuple(rows(t) for t in vision.fpn_hidden_states),
            fpn_position_encoding=tuple(rows(t) for t in vision.fpn_position_encoding),
        )
        text, mask = self._text([text for _, text in queries])
        output = self.model(vision_embeds=shared, text_embeds=text, attention_mask=mask)
        scores = output.pred_logits.float().sigmoid() * output.presence_logits.float().sigmoid()
        height, width = image.shape[:2]
        size = torch.tensor([width, height, width, height], device=scores.device)
        xyxy = torch.minimum((output.pred_boxes.float() * size).clamp(min=0), size)
        classes = torch.tensor([label for label, _ in queries], device=scores.device)
        keep = scores > self.box_threshold  # (K, queries)
        return Boxes(
            xyxy[keep].cpu().numpy(),
            classes[:, None].expand_as(scores)[keep].cpu().numpy(),
            scores[keep].cpu().numpy(),
        )
