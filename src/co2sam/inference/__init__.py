"""Inference below evaluation and prediction: one small :class:`Predictor` interface
(``base``) and its two implementations, SAM with box prompts (``sam``) and a trained
semantic-segmentation network alone (``segmenter``); ONNX export of the latter
(``onnx_export``)."""
