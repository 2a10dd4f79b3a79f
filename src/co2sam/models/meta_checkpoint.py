"""What SAM's and SAM 2's Meta checkpoint files share (:mod:`co2sam.models.official`,
:mod:`co2sam.models.official_sam2`): a table of name templates compiled into rules for
both directions, the strict copy of renamed weights into a transformers model (a missing
or unexpected key, or a wrong shape, is an error that names it), and the file write."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

NameRules = list[tuple[re.Pattern[str], str]]
"""(pattern of one layout's key, template of the other's), first match wins."""


class CheckpointError(ValueError):
    """A SAM checkpoint file cannot be used (unreadable, unknown architecture, bad keys)."""


def name_rules(
    table: list[tuple[str, str]], placeholders: Mapping[str, str]
) -> tuple[NameRules, NameRules]:
    """(Meta -> transformers, transformers -> Meta) rules from ``(Meta, transformers)``
    name templates; ``placeholders`` gives the regex of each ``{name}`` in them."""

    def compile_template(template: str) -> re.Pattern[str]:
        pattern = re.escape(template)
        for name, regex in placeholders.items():
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{regex})")
        return re.compile(pattern)

    meta_to_hf = [(compile_template(meta), hf) for meta, hf in table]
    hf_to_meta = [(compile_template(hf), meta) for meta, hf in table]
    return meta_to_hf, hf_to_meta


def rename_key(key: str, rules: NameRules) -> str | None:
    """``key`` in the other layout by the first rule that matches it; None if none does."""
    for pattern, template in rules:
        match = pattern.fullmatch(key)
        if match:
            return template.format(**match.groupdict())
    return None


def registered_variant(
    variants: Mapping[str, Callable[[], Any]],
    matches: Callable[[Any], bool],
    path: str | Path,
    found: str,
) -> str:
    """The first of ``variants`` (name -> config builder) whose config ``matches`` the
    weights; else an error naming what was ``found`` (``SAM variant has ... with {...}``)."""
    for name, builder in variants.items():
        if matches(builder()):
            return name
    raise CheckpointError(f"{path}: no registered {found}; registered: {', '.join(variants)}.")


def load_renamed(
    model: Any,
    converted: dict[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    unexpected: list[str],
    *,
    path: str | Path,
    described: str,
    meta_name: Callable[[str], str],
) -> Any:
    """Copy ``converted`` (transformers names) into ``model`` strictly.

    expected: ``model.state_dict()``. unexpected: the file's keys the model has no place
    for. described: the model in the error (``SAM {fingerprint}``). meta_name: a
    transformers key -> its Meta name, for the error.
    """
    missing = [meta_name(k) for k in expected if k not in converted]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match {described}: "
            f"missing keys {missing[:10]}, unexpected keys {unexpected[:10]}"
            + (" (and more)" if len(missing) > 10 or len(unexpected) > 10 else "")
        )
    for key, tensor in converted.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: {meta_name(key)!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(converted, strict=True)
    return model


def save_checkpoint_file(content: Any, path: str | Path) -> Path:
    """``torch.save(content)`` to ``path`` atomically: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(content, temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path
