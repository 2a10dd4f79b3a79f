"""The detector texts of each class (readable names, or the user's synonyms; the raw
names for ``prompts.compat: reference``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from co2sam.classes import prompt_name


def class_prompts(class_names: Sequence[str], synonyms: Sequence[str] = ()) -> list[list[str]]:
    """Detector texts per object class, ``result[c - 1]`` for class ``c`` in 1..C.

    class_names: background first. synonyms: ``"dataset_name=text|other text"`` entries
    that replace the default text, :func:`co2sam.classes.prompt_name`.
    """
    texts = [[prompt_name(name)] for name in class_names[1:]]
    for entry in synonyms:
        name, _, raw = entry.partition("=")
        if name.strip() not in class_names[1:]:
            raise ValueError(
                f"prompts.synonyms names unknown class {name.strip()!r}; "
                f"classes: {', '.join(class_names[1:])}"
            )
        options = [text.strip().lower() for text in raw.split("|") if text.strip()]
        if not options:
            raise ValueError(f"prompts.synonyms entry {entry!r} gives no text")
        texts[class_names.index(name.strip()) - 1] = options
    return texts


def detector_texts(class_names: Sequence[str], prompts: Any) -> list[list[str]]:
    """The detector texts per object class for ``config.prompts``: the readable names and
    synonyms (:func:`class_prompts`), or with ``compat: reference`` the dataset's names as
    written, as the published code queries them."""
    if prompts.compat == "reference":
        return [[name] for name in class_names[1:]]
    return class_prompts(class_names, prompts.synonyms)
