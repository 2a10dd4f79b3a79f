"""Shared by the training tests: a small synthetic split, `co2sam train` that reports steps."""

from __future__ import annotations

import textwrap

# `co2sam train`, telling the test when each training step is done.
CLI_WITH_STEP_LINES = textwrap.dedent(
    """
    from co2sam.cli import app
    from co2sam.train import loop

    real_step = loop.training_step

    def step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        print("STEP", flush=True)
        return result

    loop.training_step = step
    app(prog_name="co2sam")
    """
)


def small_train_data(tmp_path_factory):
    """A synthetic dataset of 48-pixel images, 2 classes: 3 train and 2 val images."""
    from co2sam.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(
        root, num_images=5, num_classes=2, image_size=48, seed=0, splits={"train": 3, "val": 2}
    )
    return root
