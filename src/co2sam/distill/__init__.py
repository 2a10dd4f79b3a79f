"""The second stage: a standard semantic-segmentation network trained on Co2SAM's
pseudo-labels (``co2sam distill``), with the Fabric loop properties of ``train``.

``distill(config)`` (``loop``) runs it; ``config`` holds :class:`DistillConfig` and the
presets; ``data`` checks and reads the pseudo-label folder; ``augment`` is the
albumentations recipe; ``schedule`` the AdamW groups and warm-up + poly schedule.
"""
