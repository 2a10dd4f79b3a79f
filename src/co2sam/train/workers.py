"""The loader-worker guard of ``train`` and ``distill``: see :mod:`co2sam.lifetime`."""

from co2sam.lifetime import WorkerGuard

__all__ = ["WorkerGuard"]
