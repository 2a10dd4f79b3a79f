"""The second stage's pre-flight: every file it will read, checked before the first step.

``co2sam distill`` reads the training split's images and pseudo-labels and the validation
split's images and masks. :func:`checked_splits` checks them all (``check-data``'s rules
for the images and masks, :func:`co2sam.distill.data.pseudo_label_problems` for the
pseudo-labels) and stops with one :class:`co2sam.data.preflight.PreflightError` listing
every problem of every split, or, with ``data.skip_bad``, leaves the images with bad
image or mask files out (``skipped.txt``). Pseudo-labels that do not match are never
skipped: they mean the folder was written for other data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from co2sam.data.check import Problem
from co2sam.data.preflight import (
    SKIPPED_FILE,
    PreflightError,
    SkipLog,
    checked_split,
    preflight,
)
from co2sam.distill.data import PseudoLabelFolder, check_pseudo_labels, pseudo_label_problems
from co2sam.parallel import from_fabric

PSEUDO_LABEL_FIX = "re-run `co2sam pseudo-labels` for this split (or fix --pseudo-labels)"


def checked_splits(
    config: Any, train_dataset: Any, val_dataset: Any, folder: PseudoLabelFolder, fabric: Any
) -> tuple[Any, Any]:
    """The training and validation splits to run on, after the pre-flight (see the module).

    val_dataset None (no validation) is left None. The validation split comes back
    wrapped so that a file failing later is skipped, not a crash (as in ``train``).
    """
    log = SkipLog(Path(config.train.out_dir) / SKIPPED_FILE)
    processes = from_fabric(fabric)
    confidence = config.pseudo_labels.min_confidence > 0
    failed: list[PreflightError] = []
    if config.data.preflight:
        try:  # training reads the images (and the pseudo-labels), not the masks
            train_dataset, _ = preflight(
                train_dataset,
                skip_bad=config.data.skip_bad,
                log=log,
                processes=processes,
                masks=False,
            )
        except PreflightError as error:
            failed.append(error)
    if val_dataset is not None:
        try:
            val_dataset = checked_split(val_dataset, config.data, log=log, processes=processes)
        except PreflightError as error:
            failed.append(error)
    if not failed:
        check_pseudo_labels(train_dataset, folder, confidence=confidence)
        return train_dataset, val_dataset
    # Bad files stop the run: list the pseudo-labels' problems in the same table.
    found = pseudo_label_problems(train_dataset, folder, confidence=confidence)
    split = f"{config.data.train_split} pseudo-labels"
    rows = [
        Problem("error", split, *_row(folder, image_id, problem), PSEUDO_LABEL_FIX, image_id)
        for image_id, problems in found.items()
        for problem in problems
    ]
    if rows:
        failed.append(PreflightError(split, rows))
    raise PreflightError.merged(failed)


def _row(folder: PseudoLabelFolder, image_id: str, problem: str) -> tuple[str, str]:
    """(file, problem) of a pseudo-label problem, the file relative to the folder (as the
    image rows' files are relative to the dataset)."""
    file = str(folder.label_path(image_id).relative_to(folder.root))
    problem = problem.replace(f"{folder.root}{os.sep}", "")
    return file, problem.removeprefix(f"{file}: ")
