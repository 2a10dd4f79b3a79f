"""Detector text prompts and the mapping from token scores back to classes.


Grounding DINO reads a prompt like ``"[CLS] cat . dining table . [SEP]"`` and scores
every box against every token. We build the token ids ourselves, one class name at a
time, so we know exactly which token positions belong to which class (its *span*);
decoded phrases are never matched against names (they merge and split names).

Rule (documented in the README): for a box with token probabilities ``p`` (sigmoid of
the logits) over a prompt,

* class score of class ``c`` = max of ``p`` over the tokens of all of ``c``'s spans
  (a class has several spans when it has synonyms);
* box score = max of ``p`` over all tokens of the prompt (as the reference code);
* the box is kept if box score > ``box_threshold`` and the best class score >
  ``text_threshold``; it gets the best class (ties: the lower class index) and the
  box score as its confidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from co2sam.records import Boxes


@dataclass(frozen=True)
class ClassSpan:
    """Token positions ``start:end`` (end exclusive) of one text of class ``class_index``."""

    class_index: int
    start: int
    end: int


@dataclass(frozen=True)
class TextQuery:
    """One detector prompt: token ids with [CLS]/[SEP], and the span of every class text."""

    input_ids: tuple[int, ...]
    spans: tuple[ClassSpan, ...]

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(sorted({span.class_index for span in self.spans}))


def build_queries(
    tokenizer, class_texts: Mapping[int, Sequence[str]], max_tokens: int = 256
) -> list[TextQuery]:
    """Pack classes into as few prompts as fit in ``max_tokens`` tokens each.

    class_texts: class index (1..C) -> its texts (name and synonyms), in query order.
    Each text is followed by a "." token; all texts of one class stay in one prompt, so
    every class is queried exactly once. Raises ValueError if one class alone is too long.
    """
    separator = tokenizer.convert_tokens_to_ids(".")
    pieces = []  # (class index, [token ids of each text])
    for class_index, texts in class_texts.items():
        encoded = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
        if any(not tokens for tokens in encoded):
            raise ValueError(f"class {class_index} has an empty detector text: {list(texts)}")
        pieces.append((class_index, encoded))
    queries: list[TextQuery] = []
    ids: list[int] = [tokenizer.cls_token_id]
    spans: list[ClassSpan] = []
    for class_index, encoded in pieces:
        length = sum(len(tokens) + 1 for tokens in encoded)
        if 2 + length > max_tokens:
            raise ValueError(
                f"the detector texts of class {class_index} need {length + 2} tokens, "
                f"more than the model's limit of {max_tokens}"
            )
        if len(ids) + length + 1 > max_tokens:  # +1 for [SEP]
            queries.append(TextQuery(tuple(ids + [tokenizer.sep_token_id]), tuple(spans)))
            ids, spans = [tokenizer.cls_token_id], []
        for tokens in encoded:
            spans.append(ClassSpan(class_index, len(ids), len(ids) + len(tokens)))
            ids.extend(tokens)
            ids.append(separator)
    if spans:
        queries.append(TextQuery(tuple(ids + [tokenizer.sep_token_id]), tuple(spans)))
    return queries


def class_scores(token_probs: torch.Tensor, query: TextQuery) -> tuple[torch.Tensor, list[int]]:
    """Per-class scores of every box: ``(N, K)`` for the K classes of ``query`` (sorted).

    token_probs: (N, T) sigmoid token probabilities, T >= len(query.input_ids).
    """
    classes = list(query.classes)
    scores = token_probs.new_zeros((token_probs.shape[0], len(classes)))
    for span in query.spans:
        column = classes.index(span.class_index)
        span_max = token_probs[:, span.start : span.end].amax(dim=1)
        scores[:, column] = torch.maximum(scores[:, column], span_max)
    return scores, classes


def select_detections(
    token_probs: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    query: TextQuery,
    box_threshold: float,
    text_threshold: float,
) -> Boxes:
    """Apply the thresholds and the span rule (module docstring) to one image's queries.

    token_probs: (N, T) sigmoid of the detector's logits for N boxes (padding = 0).
    boxes_xyxy: (N, 4) boxes already in the original image's pixel frame.
    """
    token_probs = token_probs.float()
    box_scores = token_probs[:, : len(query.input_ids)].amax(dim=1)
    per_class, classes = class_scores(token_probs, query)
    best_score, best_column = per_class.max(dim=1)  # first maximum: lower class index
    keep = (box_scores > box_threshold) & (best_score > text_threshold)
    class_ids = torch.tensor(classes, dtype=torch.long)[best_column.cpu()]
    keep = keep.cpu()
    return Boxes(
        boxes_xyxy.detach().float().cpu()[keep].numpy(),
        class_ids[keep].numpy(),
        box_scores.detach().cpu()[keep].numpy(),
    )
