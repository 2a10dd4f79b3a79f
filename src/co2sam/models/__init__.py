"""SAM building blocks: variants, loading, LoRA, adapter files and the Segmenter.

The public names are re-exported by :mod:`co2sam.sam`; import them from there.
"""
