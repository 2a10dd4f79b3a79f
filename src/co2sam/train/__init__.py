"""Training: the Co2SAM step (``step``), the Fabric loop with checkpoints (``loop``).

``fit(config, ...)`` runs a whole training; ``training_step(segmenter, batch, loss_config)``
is one forward of the three branches and the loss. Both import torch and lightning
lazily through this module's attributes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FitResult", "NonFiniteLossError", "TrainingInterrupted", "fit", "training_step"]


def __getattr__(name: str) -> Any:
    if name in ("FitResult", "NonFiniteLossError", "TrainingInterrupted", "fit"):
        from co2sam.train import loop

        return getattr(loop, name)
    if name == "training_step":
        from co2sam.train.step import training_step

        return training_step
    raise AttributeError(f"module 'co2sam.train' has no attribute {name!r}")
