from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertTokenizer

from co2sam.classes import COCO_CLASSES, prompt_name
from co2sam.prompts.text_queries import build_queries, class_scores, select_detections

# Grounding DINO hard-codes BERT's ids of [CLS] 101, [SEP] 102, "." 1012 and "?" 1029.
SPECIAL_IDS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
SPECIAL_IDS.update({1012: ".", 1029: "?"})


def make_tokenizer(folder: Path, words: list[str]) -> BertTokenizer:
    """A BERT WordPiece tokenizer over ``words`` with BERT's special-token ids."""
    vocab = [f"[unused{index}]" for index in range(1040)]
    for index, token in SPECIAL_IDS.items():
        vocab[index] = token
    vocab += sorted(set(words) - set(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer.from_pretrained(str(folder))


def word_tokenizer(folder: Path, names) -> BertTokenizer:
    return make_tokenizer(folder, [word for name in names for word in name.split()])


def _probs(length: int, hot: dict[int, float], boxes: int = 1) -> torch.Tensor:
    probs = torch.zeros((boxes, 256))
    for position, value in hot.items():
        probs[:, position] = value
    return probs


def test_spans_of_multi_word_and_shared_words(tmp_path):
    names = ["dining table", "potted plant", "tv monitor", "monitor lizard", "light"]
    tokenizer = word_tokenizer(tmp_path, names + ["traffic light"])
    texts = {index: [name] for index, name in enumerate(names, start=1)}
    (query,) = build_queries(tokenizer, texts)
    tokens = tokenizer.convert_ids_to_tokens(list(query.input_ids))
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    for span in query.spans:
        assert " ".join(tokens[span.start : span.end]) == names[span.class_index - 1]
        assert tokens[span.end] == "."
    assert query.input_ids == tuple(tokenizer(". ".join(names) + ".")["input_ids"])

    monitor_positions = [i for i, token in enumerate(tokens) if token == "monitor"]
    assert len(monitor_positions) == 2
    # Only the second "monitor" (in "monitor lizard") fires: the box is a lizard.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    found = select_detections(_probs(256, {monitor_positions[1]: 0.9}), boxes, query, 0.3, 0.25)
    assert found.classes.tolist() == [4] and found.scores.tolist() == pytest.approx([0.9])
    # "plant" alone (second word of "potted plant") maps to potted plant.
    plant = tokens.index("plant")
    found = select_detections(_probs(256, {plant: 0.6, 1: 0.2}), boxes, query, 0.3, 0.25)
    assert found.classes.tolist() == [2]


def test_class_scores_are_span_maxima_and_thresholds(tmp_path):
    names = ["traffic light", "light", "dining table"]
    tokenizer = word_tokenizer(tmp_path, names)
    (query,) = build_queries(tokenizer, {1: ["traffic light"], 2: ["light"], 3: ["dining table"]})
    # tokens: [CLS] traffic light . light . dining table . [SEP]
    probs = _probs(256, {1: 0.2, 2: 0.7, 4: 0.5, 6: 0.1}, boxes=1)
    scores, classes = class_scores(probs, query)
    assert classes == [1, 2, 3]
    assert scores[0].tolist() == pytest.approx([0.7, 0.5, 0.1])

    # box 0: box score 0.7 (class 1); box 1: max token is "." (0.5) but classes only 0.2
    # (kept only if text_threshold < 0.2); box 2: below box threshold.
    probs = torch.zeros((3, 256))
    probs[0, [1, 2, 4]] = torch.tensor([0.2, 0.7, 0.5])
    probs[1, [3, 6]] = torch.tensor([0.5, 0.2])
    probs[2, 7] = 0.29
    boxes = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    kept = select_detections(probs, boxes, query, box_threshold=0.3, text_threshold=0.25)
    assert kept.classes.tolist() == [1]
    np.testing.assert_allclose(kept.xyxy, [[0, 1, 2, 3]])
    loose = select_detections(probs, boxes, query, box_threshold=0.3, text_threshold=0.1)
    assert loose.classes.tolist() == [1, 3] and loose.scores.tolist() == pytest.approx([0.7, 0.5])
    everything = select_detections(probs, boxes, query, box_threshold=0.0, text_threshold=0.0)
    assert len(everything) == 3


def test_synonym_spans_share_a_class(tmp_path):
    tokenizer = word_tokenizer(tmp_path, ["tv", "monitor", "television", "cat"])
    (query,) = build_queries(tokenizer, {1: ["cat"], 2: ["tv monitor", "television"]})
    assert [span.class_index for span in query.spans] == [1, 2, 2]
    television = query.spans[2].start
    scores, _ = class_scores(_probs(256, {television: 0.8}), query)
    assert scores[0].tolist() == pytest.approx([0.0, 0.8])


@pytest.mark.parametrize("max_tokens", [256, 64])
def test_coco_vocabulary_is_chunked_within_the_limit(tmp_path, max_tokens):
    names = [prompt_name(name) for name in COCO_CLASSES[1:]]
    # Letter-level word pieces make every name several tokens long: > 256 in all.
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokenizer = make_tokenizer(tmp_path, list(letters) + [f"##{c}" for c in letters])
    texts = {index: [name] for index, name in enumerate(names, start=1)}
    queries = build_queries(tokenizer, texts, max_tokens=max_tokens)
    total = sum(len(tokenizer.encode(name, add_special_tokens=False)) + 1 for name in names)
    assert total > 256 and len(queries) >= 2
    assert all(len(query.input_ids) <= max_tokens for query in queries)
    queried = [span.class_index for query in queries for span in query.spans]
    assert sorted(queried) == list(range(1, 81))  # every class exactly once
    for query in queries:  # each chunk is exactly what the tokenizer makes of its text
        text = ". ".join(names[index - 1] for index in query.classes) + "."
        assert query.input_ids == tuple(tokenizer(text)["input_ids"])


def test_a_class_longer_than_the_limit_is_an_error(tmp_path):
    tokenizer = make_tokenizer(tmp_path, ["a", "##a"])
    with pytest.raises(ValueError, match="limit of 8"):
        build_queries(tokenizer, {1: ["aaaaaaaaaa"]}, max_tokens=8)
